"""Conversions from the units vendors send to the canonical UCUM unit of each component. Pure.

Units are named by their case-sensitive UCUM codes (https://ucum.org/ucum): ``[lb_av]`` is the
avoirdupois pound, ``[degF]`` degrees Fahrenheit, ``Cel`` degrees Celsius, ``mm[Hg]`` millimetres
of mercury. Each decoder first maps its vendor's spelling to a UCUM code, then asks this module.

A converted value is rounded to the precision the canonical unit needs (``DECIMALS``): far below
what any home device resolves, so rounding never changes a clinical decision, and the stored value
does not carry float noise such as ``81.82896600000001``. Values already in the canonical unit are
passed through untouched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from rpm.domain.errors import DecodeError


@dataclass(frozen=True, slots=True)
class Conversion:
    """``canonical = (value + offset) * factor``, rounded to the canonical unit's decimals."""

    factor: float
    offset: float = 0.0

    def apply(self, value: float, decimals: int) -> float:
        return round((value + self.offset) * self.factor, decimals)


# Decimals kept after a conversion, by canonical unit: 1 g of body weight, 0.01 °C of body
# temperature, 0.1 mg/dL of glucose, 0.1 mmHg of pressure.
DECIMALS: Mapping[str, int] = MappingProxyType({"kg": 3, "Cel": 2, "mg/dL": 1, "mm[Hg]": 1})

CONVERSIONS: Mapping[tuple[str, str], Conversion] = MappingProxyType(
    {
        # NIST SP 811 (2008), appendix B.8: 1 lb (avoirdupois) = 0.45359237 kg exactly; UCUM
        # defines [lb_av] as 7000 [gr] with [gr] = 64.79891 mg, the same value.
        ("[lb_av]", "kg"): Conversion(0.45359237),
        # SI prefix: 1 g = 10^-3 kg.
        ("g", "kg"): Conversion(0.001),
        # NIST SP 811 (2008), appendix B.9 (temperature): t/°C = (t/°F - 32) / 1.8; UCUM's
        # [degF] is the same special unit.
        ("[degF]", "Cel"): Conversion(5 / 9, -32.0),
        # SI Brochure (9th ed.), 2.3.1: t/°C = T/K - 273.15.
        ("K", "Cel"): Conversion(1.0, -273.15),
        # Glucose only: its molar mass is 180.16 g/mol (C6H12O6), so 1 mmol/L = 180.16 mg/L
        # = 18.016 mg/dL. Glucose is the only component whose canonical unit is mg/dL.
        ("mmol/L", "mg/dL"): Conversion(18.016),
        # UCUM defines m[Hg] as 133.3220 kPa, so 1 mm[Hg] = 133.3220 Pa and
        # 1 kPa = 1000 / 133.3220 mm[Hg].
        ("kPa", "mm[Hg]"): Conversion(1000 / 133.3220),
    }
)

_ANNOTATION = re.compile(r"\{[^{}]*\}")


def without_annotations(code: str) -> str:
    """``{beats}/min`` -> ``/min``: UCUM annotations in curly braces carry no meaning.

    UCUM §6 (curly braces): an annotation is a comment and does not change the unit.
    """
    return _ANNOTATION.sub("", code)


def to_canonical(value: float, unit: str, canonical: str) -> float:
    """``value`` in ``unit`` expressed in ``canonical``; ``DecodeError`` if there is no way."""
    if unit == canonical:
        return value
    conversion = CONVERSIONS.get((unit, canonical))
    if conversion is None:
        raise DecodeError(f"cannot convert {unit[:20]!r} to {canonical}")
    return conversion.apply(value, DECIMALS.get(canonical, 3))
