"""What a unit of work did, in all and per message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from rpm.domain import AcceptedReading, RawMessage, Rejection
from rpm.storage.corrections import Correction


@dataclass(slots=True)
class MessageResult:
    """What one unit of work did with one of its messages."""

    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    retracted: int = 0  # stored readings marked entered-in-error (now or by an earlier retry)
    retractions_pending: int = 0  # retractions of readings not stored yet, kept


@dataclass(slots=True)
class BatchResult:
    """What one unit of work did (``per_message``: only when ``process`` is asked for it)."""

    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    alerts_opened: list[int] = field(default_factory=list)
    alerts_changed: list[int] = field(default_factory=list)
    # Confirm before paging: confirmations opened (first readings held) and ended.
    confirmations_opened: int = 0
    confirmations_closed: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    per_message: list[MessageResult] = field(default_factory=list)
    retracted: int = 0
    retractions_pending: int = 0


@dataclass(frozen=True, slots=True)
class Prepared:
    accepted: list[AcceptedReading]
    rejections: list[Rejection]
    seen: dict[str, tuple[datetime, dict[str, float]]]
    origins: list[int]  # index in the batch of the message each accepted reading came from
    corrections: list[Correction] = field(default_factory=list)  # retractions, attributed
    correction_origins: list[int] = field(default_factory=list)


def itemize(
    batch: Sequence[RawMessage],
    prepared: Prepared,
    new: Sequence[AcceptedReading],
    corrected: Sequence[str] = (),
) -> list[MessageResult]:
    """The batch's outcome per message. ``new`` holds the very objects of
    ``prepared.accepted`` that were inserted; a rejection keeps the message it came from."""
    out = [MessageResult() for _ in batch]
    fresh = {id(a) for a in new}
    for a, i in zip(prepared.accepted, prepared.origins, strict=True):
        if id(a) in fresh:
            out[i].stored += 1
        else:
            out[i].duplicates += 1
    for outcome, i in zip(corrected, prepared.correction_origins, strict=True):
        if outcome == "pending":
            out[i].retractions_pending += 1
        else:
            out[i].retracted += 1
    index = {id(raw): i for i, raw in enumerate(batch)}
    for r in prepared.rejections:
        m = out[index[id(r.raw)]]
        m.quarantined += 1
        m.quarantine_reasons[r.reason.value] = m.quarantine_reasons.get(r.reason.value, 0) + 1
    return out
