"""The decoder interface: a pure function from a raw message to readings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rpm.domain import RawMessage, Reading, Retraction


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a decoder made of one payload.

    ``problems`` names items of a multi-reading payload that could not be decoded;
    the whole payload is kept in the quarantine once per problem, the good items go on.
    ``device_status`` maps a device id to what the payload said of it (``battery`` in %,
    ``signal`` in dBm), when it said anything.
    ``retractions``: earlier readings the payload says were not measurements (a FHIR
    Observation with status ``entered-in-error`` or ``cancelled``).
    """

    readings: list[Reading]
    problems: list[str] = field(default_factory=list)
    device_status: dict[str, dict[str, float]] = field(default_factory=dict)
    retractions: list[Retraction] = field(default_factory=list)


Decoder = Callable[[RawMessage], Decoded]
