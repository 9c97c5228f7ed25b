"""The README's first command: `rpm demo` fills the demo nurse's queue within a minute."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest

from rpm.staff_cli import DEMO_NURSE_ID
from simulators.demo import DEMO_DATABASE, DemoOptions, run_demo
from simulators.localservices import LocalServices
from tests.conftest import with_database


async def test_the_demo_fills_the_nurses_queue_within_a_minute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its own local services (as scripts/demo.sh starts them), 60 patients, three days
    # replayed in 20 s of wall time; the demo returns once the replay is reported.
    opts = DemoOptions(
        data_dir=tmp_path / "demo",
        patients=60,
        days=3,
        seconds=20,
        port=0,
        exit_after_replay=True,
        stop_services=False,
    )
    services = LocalServices(opts.data_dir)
    try:
        assert await run_demo(opts) == 0
        out = capsys.readouterr().out
        assert f"sign in as {DEMO_NURSE_ID}, password " in out
        assert re.search(r"^lost\s+0$", out, re.M), out
        opened = [int(n) for n in re.findall(r"alerts opened\s+(\d+)", out)]
        assert opened, out
        assert opened[-1] > 0, out

        # The nurse's care team holds the fleet: every alert is in her queue.
        url = with_database(services.start().database_url, DEMO_DATABASE)
        conn = await asyncpg.connect(url)
        try:
            visible, total = await conn.fetchrow(
                """SELECT count(*) FILTER (WHERE p.care_team IN (
                              SELECT team_id FROM care_team_members WHERE staff_id = $1)),
                          count(*)
                     FROM alerts a JOIN patients p ON p.id = a.patient_id""",
                DEMO_NURSE_ID,
            )
        finally:
            await conn.close()
        assert visible == total == opened[-1]
    finally:
        services.stop()
