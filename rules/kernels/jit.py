"""Compiling the loops: numba's njit with its on-disk cache, or without it where numba
finds no writable place (a warning says so, once)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

_F = TypeVar("_F", bound=Callable[..., Any])

log = logging.getLogger(__name__)
uncached: list[str] = []  # loops numba found nowhere to cache


def compiled(f: _F) -> _F:
    """``f`` compiled (``error_model="numpy"``: 0/0 is NaN as in numpy, not an exception)."""
    try:
        return cast(_F, numba.njit(cache=True, nogil=True, error_model="numpy")(f))
    except RuntimeError as exc:  # no writable place for the cache (set NUMBA_CACHE_DIR)
        if not uncached:
            log.warning("compiled loops are not cached, each process compiles them: %s", exc)
        uncached.append(f.__name__)
        return cast(_F, numba.njit(nogil=True, error_model="numpy")(f))
