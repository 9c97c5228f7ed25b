"""The planner's write per message, with and without campaign_sends' foreign keys.

    uv run python benchmarks/planner_write.py              # 20,000 messages, 3 rounds
    uv run python benchmarks/planner_write.py --messages 5000 --rounds 1

The statement is the write half of ``rpm.storage.campaigns.plan``: an SMS outbox row (its
dedupe key, payload and indexes) and a ``campaign_sends`` row for each of ``--messages``
patients, one ``INSERT ... SELECT``, run under ``EXPLAIN (ANALYZE, BUFFERS)`` in a rolled-back
transaction on a migrated database of its own (LocalServices' PostgreSQL, in a temporary
directory). Each round runs it with the two foreign keys migration 0030 dropped put back
(``fk``), then as migrated (``no_fk``); the figures are medians over the rounds, per message,
and ``fk_trigger_us``: the foreign-key checks' own time (PostgreSQL's "Trigger for
constraint" lines). The last line is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
import re
import statistics
from collections.abc import Sequence
from typing import Any

import asyncpg
from _common import machine_busy_seconds, run_with_services

from rpm.storage.migrate import migrate
from simulators.localservices import LocalServices

WRITE = """EXPLAIN (ANALYZE, BUFFERS) WITH box AS (
    INSERT INTO outbox (channel, dedupe_key, payload, created_at, next_attempt_at)
    SELECT 'sms', 'campaign:bench:' || p.id || ':' || $1::text,
           jsonb_build_object('recipient', 'patient', 'template', 'campaign',
                              'patient_id', p.id, 'campaign', 'bench', 'version', 1,
                              'occurrence', $1::text, 'urgent', false,
                              'context', jsonb_build_object('days_measured_7d', 3)),
           now(), now()
      FROM patients p ORDER BY p.id
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id, payload->>'patient_id' AS patient_id, payload->>'occurrence' AS occurrence)
INSERT INTO campaign_sends (campaign, patient_id, occurrence, version, planned_at, outbox_id)
SELECT 'bench', b.patient_id, b.occurrence, 1, now(), b.id FROM box b ON CONFLICT DO NOTHING"""
ADD_FKS = """ALTER TABLE campaign_sends
    ADD CONSTRAINT campaign_sends_patient_id_fkey FOREIGN KEY (patient_id) REFERENCES patients(id),
    ADD CONSTRAINT campaign_sends_outbox_id_fkey FOREIGN KEY (outbox_id) REFERENCES outbox(id)"""
DROP_FKS = """ALTER TABLE campaign_sends DROP CONSTRAINT campaign_sends_patient_id_fkey,
    DROP CONSTRAINT campaign_sends_outbox_id_fkey"""


async def once(conn: asyncpg.Connection, occurrence: str) -> tuple[float, float]:
    """(execution ms, foreign-key trigger ms) of one write, rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        plan = "\n".join(r[0] for r in await conn.fetch(WRITE, occurrence))
    finally:
        await tx.rollback()
    found = re.search(r"Execution Time: ([0-9.]+)", plan)
    total = float(found.group(1)) if found else float("nan")
    fk = sum(float(t) for t in re.findall(r"Trigger for constraint [^:]*: time=([0-9.]+)", plan))
    return total, fk


async def run(dsn: str, messages: int, rounds: int) -> tuple[str, dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute(
            """INSERT INTO patients (id, display_name)
               SELECT 'p' || lpad(i::text, 7, '0'), 'bench' FROM generate_series(1, $1) i""",
            messages,
        )
        await conn.execute("VACUUM ANALYZE patients")
        busy0 = machine_busy_seconds()
        runs: dict[str, list[tuple[float, float]]] = {"fk": [], "no_fk": []}
        for k in range(rounds):
            await conn.execute(ADD_FKS)
            runs["fk"].append(await once(conn, f"fk-{k}"))
            await conn.execute(DROP_FKS)
            runs["no_fk"].append(await once(conn, f"no-fk-{k}"))
        busy = machine_busy_seconds() - busy0
    finally:
        await conn.close()
    per = {m: statistics.median(1000 * t / messages for t, _ in r) for m, r in runs.items()}
    fk_us = statistics.median(1000 * f / messages for _, f in runs["fk"])
    load = [f"{x:.2f}" for x in os.getloadavg()]
    table = "\n".join(
        [
            f"planner write, {messages:,} messages, median of {rounds}",
            f"  with campaign_sends' foreign keys   {per['fk']:6.1f} us/message"
            f" (the checks {fk_us:.1f})",
            f"  without (migration 0030)            {per['no_fk']:6.1f} us/message",
            f"  machine busy {busy:.1f} s of CPU; load average {' '.join(load)}",
        ]
    )
    result = {
        "messages": messages,
        "rounds": rounds,
        "fk_us": round(per["fk"], 1),
        "no_fk_us": round(per["no_fk"], 1),
        "fk_trigger_us": round(fk_us, 1),
        "loadavg": [float(x) for x in load],
    }
    return table, result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--messages", type=int, default=20_000, help="messages per write (20,000)")
    p.add_argument("--rounds", type=int, default=3, help="writes with and without (3)")
    args = p.parse_args(argv)

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        endpoints = services.start()
        return asyncio.run(run(endpoints.database_url, args.messages, args.rounds))

    return run_with_services("rpm-bench-planner-write-", body)


if __name__ == "__main__":
    raise SystemExit(main())
