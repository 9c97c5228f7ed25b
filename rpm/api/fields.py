"""Field types shared by the API's request bodies.

``Instant``: a moment as ISO 8601 text with its offset. Pydantic would also take a number
(seconds since 1970) for a datetime; the OpenAPI description says ``string``, so a number
is refused (422) instead of read as a moment nobody meant (tests/test_openapi_fuzz.py)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator


def _iso_text(value: Any) -> Any:
    if isinstance(value, int | float):
        raise ValueError("a moment is ISO 8601 text with its offset, not a number")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_iso_text)]
