"""CPU samples taken every few milliseconds while a consumer drains, so the CPU of each part
is read over the drain's own window (first batch in hand -> commit of the Nth), not over
the consumer's start-up as well."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable

from _common import cpu_seconds, descendants

INTERVAL_S = 0.02

Sample = dict[str, float]


class CpuTimeline:
    """``sample()`` (the services and the machine) plus the consumer process's CPU and its
    process tree's (the workers' process it starts, in split mode), every ``INTERVAL_S``."""

    def __init__(self, sample: Callable[[], Sample], consumer_pid: int) -> None:
        self._sample = sample
        self._pid = consumer_pid
        self._times: list[float] = []
        self._samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-timeline", daemon=True)

    def __enter__(self) -> CpuTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            tree = descendants(self._pid)
            if len(tree) > 1 and _is_py_spy(self._pid):
                # Profiling: the consumer is py-spy's child; py-spy's own CPU is in "others".
                tree = descendants(tree[1])
            sample = {**self._sample(), "consumer": cpu_seconds(tree[:1])}
            sample["tree"] = cpu_seconds(tree)
            self._times.append(time.time())
            self._samples.append(sample)
            if self._stop.wait(INTERVAL_S):
                return

    def window(self, start: float, end: float) -> tuple[Sample, Sample] | None:
        """The last sample at or before ``start`` and the first at or after ``end`` (the
        window they span holds the drain: CPU a little over, never under); None if the
        samples do not cover it."""
        i = bisect.bisect_right(self._times, start) - 1
        j = bisect.bisect_left(self._times, end)
        if i < 0 or j >= len(self._times):
            return None
        return self._samples[i], self._samples[j]


def _is_py_spy(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "py-spy"
    except OSError:
        return False
