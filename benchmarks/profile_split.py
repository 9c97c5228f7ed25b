"""The split of a consumer's CPU per ingest stage, from a py-spy profile that
``benchmarks/ingest.py --profile DIR`` recorded (raw format, ``--idle``, 200 samples/s):

    .venv/bin/python benchmarks/ingest.py --profile /tmp/prof
    .venv/bin/python benchmarks/profile_split.py /tmp/prof/gateway.txt

Each sample goes to the first stage whose pattern a frame of its stack matches, in the
order below. ``waiting`` (the thread pool's and selectors' idle threads, and uvloop's own
loop, whose C code py-spy cannot see into: waiting for the socket and the C callbacks
alike) and ``start-up`` (imports) are left out of ``busy``; the stages are shares of it.
Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

# (stage, pattern of a frame), first match wins
STAGES: list[tuple[str, str]] = [
    ("start-up", r"^_find_and_load "),
    (
        "threshold rules before the insert",
        r"(^|\.)(interpret|evaluate|thresholds) \(rules/(engine|interpretation)\.py",
    ),
    ("rule step", r"(^|\.)step \(rules/engine\.py"),
    ("alert decisions", r"(^|\.)_decide \(rpm/pipeline/unit_of_work\.py"),
    ("decode and validation", r"(^|\.)prepare \(rpm/pipeline/prepare\.py"),
    ("unit of work: SQL", r"\(asyncpg/"),  # under the unit of work (below)
    ("unit of work: other", r"unit_of_work\.py"),
    # paho (the gateway's client before 3434513) or mqtt_session with its codec (mqtt5 is
    # compiled: its time shows in the Python frame calling it)
    (
        "MQTT client (packets, message objects)",
        r"\((paho/|device_gateways/(mqtt|paho)_session\.py)",
    ),
    ("gateway intake (batches, ack)", r"\(device_gateways/"),
]
# leaf frames of a thread or loop that waits
WAITING = re.compile(
    r"^(Runner\.run \(asyncio/runners|_worker \(concurrent/futures/thread"
    r"|_PollLikeSelector\.select|select \(selectors|Condition\.wait|Event\.wait)"
)


def split(path: Path, readings: int = 0, rate: float = 200.0) -> dict[str, object]:
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        samples, frames = int(n), stack.split(";")
        total += samples
        if frames and WAITING.match(frames[-1]):
            counts["waiting"] += samples
            continue
        counts[_stage(frames, stack)] += samples
    busy = total - counts["waiting"] - counts["start-up"]
    shares = {
        stage: round(100 * counts[stage] / busy, 1) if busy else 0.0
        for stage, _ in STAGES[1:]
        if stage != "start-up"
    }
    shares["other (event loop callbacks, logging, ...)"] = round(
        100 * counts["other"] / busy if busy else 0.0, 1
    )
    out: dict[str, object] = {
        "profile": str(path),
        "samples": total,
        "busy_samples": busy,
        "busy_pct": shares,
    }
    if readings:  # CPU per reading, each stage: samples / rate / readings
        out["us_per_reading"] = {
            stage: round(1e6 * counts[stage] / rate / readings, 2) for stage, _ in STAGES[1:]
        }
    return out


def _stage(frames: list[str], stack: str) -> str:
    for stage, pattern in STAGES:
        if stage == "unit of work: SQL" and "unit_of_work.py" not in stack:
            continue
        rx = re.compile(pattern)
        if any(rx.search(f) for f in frames):
            return stage
    return "other"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("profile", type=Path, help="a py-spy raw profile (gateway.txt)")
    p.add_argument(
        "--readings",
        type=int,
        default=0,
        help="readings the consumer handled (ingest.py: drained + live), for µs per reading",
    )
    p.add_argument("--rate", type=float, default=200.0, help="py-spy samples/s (ingest.py's)")
    args = p.parse_args(argv)
    out = split(args.profile, args.readings, args.rate)
    busy = out["busy_pct"]
    assert isinstance(busy, dict)
    print(f"{args.profile}: {out['busy_samples']} busy samples of {out['samples']}")
    each = out.get("us_per_reading", {})
    assert isinstance(each, dict)
    for stage, pct in busy.items():
        us = f"  {each[stage]:6.2f} µs/reading" if stage in each else ""
        print(f"  {stage:<45} {pct:5.1f} %{us}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
