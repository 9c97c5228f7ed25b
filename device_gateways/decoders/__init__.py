"""Payload decoders, found by payload format in one table.

Every decoder is a pure function ``RawMessage -> Decoded`` that raises nothing but
``DecodeError``. Formats: ``canonical`` (our JSON, MQTT), and the vendor webhooks ``tenovi``,
``withings`` (Getmeas), ``openmhealth`` (data points) and ``fhir`` (R4 Observations); each
module's docstring says where it takes the device id from.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from . import canonical, fhir, openmhealth, tenovi, withings
from .base import Decoded, Decoder

DECODERS: Mapping[str, Decoder] = MappingProxyType(
    {
        "canonical": canonical.decode,
        "tenovi": tenovi.decode,
        "withings": withings.decode,
        "openmhealth": openmhealth.decode,
        "fhir": fhir.decode,
    }
)

__all__ = ["DECODERS", "Decoded", "Decoder"]
