"""Payload decoders, found by payload format in one table."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from . import canonical
from .base import Decoded, Decoder

DECODERS: Mapping[str, Decoder] = MappingProxyType({"canonical": canonical.decode})

__all__ = ["DECODERS", "Decoded", "Decoder"]
