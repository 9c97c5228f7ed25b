"""``rpm billing report`` and ``rpm billing codes``, run as the real command in a child
process against a test database."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from datetime import date
from pathlib import Path

import asyncpg

from rpm.billing.codes import default_table
from tests.billing_helpers import add_days, add_minutes, add_patient, first_days


async def rpm_billing(db_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env["RPM_DATABASE_URL"] = db_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rpm.cli",
        "billing",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_report_and_codes(db_url: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", start=date(2026, 6, 1))
        await add_days(conn, "p1", first_days(date(2026, 6, 1), 16))
        await add_minutes(conn, "p1", date(2026, 6, 3), 41, interactive=True)

    code, out, _ = await rpm_billing(db_url, "report", "--month", "2026-06")
    assert code == 0
    assert "99453 99454 99457 99458" in out
    assert out.splitlines()[-1] == (
        "1 patients, 2026-06; codes earned: 99453 1, 99454 1, 99457 1, 99458 1"
    )
    code, out, _ = await rpm_billing(db_url, "report", "--month", "2026-06", "--csv")
    (row,) = csv.DictReader(io.StringIO(out))
    assert (row["patient_id"], row["minutes"], row["codes"]) == (
        "p1",
        "41",
        "99453 99454 99457 99458",
    )

    code, out, _ = await rpm_billing(db_url, "codes")
    assert code == 0
    assert "cms-2026" in out
    assert "system" in out
    doc = default_table().document() | {"name": "cms-2027", "effective_from": "2027-01-01"}
    good = tmp_path / "cms-2027.json"
    good.write_text(json.dumps(doc))
    code, out, _ = await rpm_billing(db_url, "codes", "--publish", str(good), "--note", "next year")
    assert (code, out.strip()) == (0, "cms-2027: published as version 2")
    code, out, _ = await rpm_billing(db_url, "codes", "--show", "2")
    assert json.loads(out)["effective_from"] == "2027-01-01"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc | {"codes": []}))
    code, _, err = await rpm_billing(db_url, "codes", "--publish", str(bad))
    assert code == 2
    assert "codes: a list of 1 to 50 codes" in err
    code, _, err = await rpm_billing(db_url, "report", "--month", "June")
    assert code == 2
    assert "not a month" in err
