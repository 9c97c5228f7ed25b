"""Trusted constructors for the hot path: a frozen, slotted value built without its checks.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` and then
runs ``__post_init__``; for values a decoder has just checked (or a transport has just
made), that is a large part of the per-reading cost of ingest (docs/performance.md). The
constructor made here writes the slots directly with their descriptors: the same object,
equal to the checked one, with no check. Use it only where the fields are known good
(STYLE.md 3: "the hot path may use a trusted constructor").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def trusted(cls: type[T]) -> Callable[..., T]:
    """``cls``'s fields, positionally and all given, in a new instance; no checks run."""
    names: tuple[str, ...] = cls.__slots__  # type: ignore[attr-defined]
    setters = {f"_set_{n}": getattr(cls, n).__set__ for n in names}
    body = "".join(f"    _set_{n}(o, {n})\n" for n in names)
    source = f"def make({', '.join(names)}):\n    o = _new(_cls)\n{body}    return o\n"
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **setters}
    exec(source, scope)  # noqa: S102 - a constructor from the class's own slot names
    make: Callable[..., T] = scope["make"]
    make.__doc__ = f"A {cls.__name__} from known-good fields (rpm.domain.trusted)."
    return make
