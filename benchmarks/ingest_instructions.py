"""Instructions per reading of the gateway's pure front (topic → RawMessage, the canonical
decoder, validation), counted by valgrind's callgrind: a figure the machine's load does not
move, unlike CPU time.

    .venv/bin/python benchmarks/ingest_instructions.py                  # this tree, 5,000
    .venv/bin/python benchmarks/ingest_instructions.py --tree /work/main --readings 2000

Runs ``python this-file --work N`` under ``valgrind --tool=callgrind`` twice, with N readings
and with none, and divides the difference (start-up and imports cancel out) by N. ``--tree``
puts another checkout first on PYTHONPATH, to compare versions. Prints one JSON line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))

import argparse
import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta


def work(n: int) -> None:
    """What the gateway does per message before the database, for ``n`` messages."""
    from device_gateways.decoders import canonical
    from device_gateways.mqtt import to_raw
    from rpm.domain import Binding, DeviceRecord
    from rpm.validation import ClockPolicy, validate

    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    devices = {
        f"dev-{i}": DeviceRecord(
            f"dev-{i}", False, (Binding(f"p{i // 3}", now - timedelta(days=9)),)
        )
        for i in range(1500)
    }
    topics = [f"rpm/v1/devices/dev-{i % 1500}/readings" for i in range(n)]
    payloads = [
        b'{"metric":"blood_pressure","measured_at":"2026-11-23T08:%02d:%02dZ",'
        b'"values":{"systolic":%d,"diastolic":91,"pulse":77},"device":{"battery":81}}'
        % ((i // 60) % 60, i % 60, 120 + i % 40)
        for i in range(n)
    ]
    policy = ClockPolicy()
    for topic, payload in zip(topics, payloads, strict=True):
        raw = to_raw(topic, payload, now)
        decoded = canonical.decode(raw)
        assert raw.device_id is not None
        ok, _ = validate(raw, decoded.readings, devices[raw.device_id], now, policy)
        assert ok


def _instructions(n: int, tree: str | None) -> int:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (tree, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--work",
            str(n),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from callgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--readings", type=int, default=5000)
    p.add_argument("--tree", default=None, help="a checkout to put first on PYTHONPATH")
    p.add_argument("--work", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.work is not None:
        work(args.work)
        return 0
    base, loaded = _instructions(0, args.tree), _instructions(args.readings, args.tree)
    line = {
        "tree": args.tree or str(Path(__file__).resolve().parents[1]),
        "readings": args.readings,
        "instructions_per_reading": round((loaded - base) / args.readings),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
