"""Latency and throughput over a run's time, drawn as a PNG (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from simulators.report import Observed, SentPayload, first_publish


def draw(sent: Sequence[SentPayload], observed: Observed, path: Path) -> None:
    """Publish -> stored latency (each reading, and p50/p99 per second) and readings sent
    and stored per second, against seconds since the first publish."""
    first = first_publish(sent)
    pairs = [(first[k], observed.stored[k]) for k in first if k in observed.stored]
    t0 = min((p for p, _ in pairs), default=0.0)
    published = np.array([p - t0 for p, _ in pairs])
    latency = np.array([(s - p) * 1000 for p, s in pairs])
    stored_at = np.array([s - t0 for _, s in pairs])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    if len(pairs):
        top.scatter(published, latency, s=2, alpha=0.25, label="reading")
        seconds = np.floor(published).astype(int)
        xs, p50, p99 = [], [], []
        for sec in np.unique(seconds):
            values = latency[seconds == sec]
            xs.append(sec + 0.5)
            p50.append(float(np.percentile(values, 50)))
            p99.append(float(np.percentile(values, 99)))
        top.plot(xs, p50, label="p50 per second")
        top.plot(xs, p99, label="p99 per second")
        top.set_yscale("log")
        span = int(max(stored_at.max(), published.max())) + 2
        bins = np.arange(0, span)
        bottom.hist(published, bins=bins, histtype="step", label="published / s")
        bottom.hist(stored_at, bins=bins, histtype="step", label="stored / s")
    top.set_ylabel("publish -> stored (ms)")
    top.legend(loc="upper right")
    bottom.set_ylabel("readings per second")
    bottom.set_xlabel("seconds since the first publish")
    bottom.legend(loc="upper right")
    fig.suptitle(f"rpm simulate: {len(pairs):,} readings")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
