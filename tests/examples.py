"""How many examples a property test draws.

The whole suite (and CI) draws each test's full count. ``pytest -m pure``, the quick loop
while editing, draws a quarter of it (at least ten): the examples are derandomized, so the
quick loop runs the first quarter of exactly the examples the full suite runs.
``tests/conftest.py`` sets the share before the test modules are imported.
"""

from __future__ import annotations

QUICK_SHARE = 0.25
share = 1.0


def examples(full: int) -> int:
    """The number of examples to draw for a test whose full count is ``full``."""
    return max(10, round(full * share)) if share < 1.0 else full
