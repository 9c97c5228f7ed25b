"""How a benchmark reports: a compact table, then ONE line holding a JSON object of its
figures (documents cite its keys: never rename or drop one); the table's small helpers; the
garbage collector's clock; where the figures were measured (CPU model, revision)."""

from __future__ import annotations

import gc
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import percentile, render_table

Row = tuple[str, str, str]
ROOT = Path(__file__).resolve().parents[1]


def ok(good: bool) -> str:
    return "ok" if good else "MISSED"


def p50_p99(ordered: Sequence[float]) -> str:
    return f"{percentile(ordered, 50):,.1f} / {percentile(ordered, 99):,.1f} ms"


def tables(sections: Mapping[str, Sequence[Row]], notes: Iterable[str] = ()) -> str:
    """The sections' tables, then any notes, as one text."""
    parts = [render_table(title, rows) for title, rows in sections.items()]
    lines = list(notes)
    return "\n\n".join([*parts, "\n".join(lines)] if lines else parts)


def finish(table: str, result: Mapping[str, Any]) -> int:
    """Print the table and the JSON line; the exit status."""
    print(table)
    print(json.dumps(result))
    return 0


def progress(name: str, quiet: bool = False) -> Callable[[str], None]:
    """A progress line on stderr (``[name] ...``), or nothing when ``quiet``."""

    def say(line: str) -> None:
        if not quiet:
            print(f"[{name}] {line}", file=sys.stderr, flush=True)

    return say


class GcClock:
    """Time the cyclic garbage collector spends (gc.callbacks), from creation to ``stop``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.longest = 0.0
        self.collections = 0
        self.full = 0  # collections of the oldest generation
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.seconds += pause
        self.longest = max(self.longest, pause)
        self.collections += 1
        self.full += info["generation"] == 2

    def stop(self) -> None:
        gc.callbacks.remove(self._on_gc)

    def figures(self) -> dict[str, float]:
        return {"gc_s": self.seconds, "gc_longest_ms": self.longest * 1000, "gc_full": self.full}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def revision(measured: str) -> str:
    """The commit, and whether the folder ``measured`` differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", measured],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted {measured}/ changes" if dirty else head
