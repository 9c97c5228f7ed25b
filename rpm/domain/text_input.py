"""Text from outside turned into numbers and identifiers, totally: every input gives a value
or a refusal, never an exception. Pure.

``str.isdigit`` is true for superscripts and other scripts' digits that ``int`` refuses or
reads ("²", "٣"), and ``int`` refuses text of more than 4,300 digits; a number that reaches
the database must also fit its column. So numbers are ASCII digits, bounded in length.
"""

from __future__ import annotations

import re

# ASCII digits only, no sign, no blanks: what a count, an id or a status code looks like.
_DIGITS = re.compile(r"[0-9]+")
# The C0 controls and DEL: never part of a path, a query value or an identifier here.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
BIGINT_DIGITS = 18  # every number of 18 digits fits PostgreSQL's bigint (2**63 - 1)


def whole_number(text: str | None, *, max_digits: int = BIGINT_DIGITS) -> int | None:
    """The number ``text`` spells in ASCII digits (at most ``max_digits`` of them), or None."""
    if text is None or not 0 < len(text) <= max_digits or not _DIGITS.fullmatch(text):
        return None
    return int(text)


def has_control_character(text: str) -> bool:
    """Whether ``text`` holds a NUL, another C0 control character or DEL."""
    return _CONTROL.search(text) is not None
