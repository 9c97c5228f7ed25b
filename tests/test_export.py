"""`rpm export`: patients, readings and alerts made through the API of the running server,
exported by the real command; no name, phone number, note or raw identifier in the files,
pseudonyms stable under one key and different under another, age bands right at their
boundaries, and no export at all without a key."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from device_gateways.webhook_auth import sign
from rpm.domain.errors import ConfigurationError
from rpm.export import Pseudonyms, age_band, load_key
from rpm.server import Server
from rpm.settings import ExportSettings, Settings
from tests.helpers import staff_headers

KEY = "k" * 16 + "export-key-for-tests-0123456789"
OTHER_KEY = "another-export-key-for-tests-0123456789"
# Everything identifying that the fixture puts into the database.
NAMES = ("Annabel Quarterman", "Bartholomew Xylander")
PHONES = ("+15551230001", "+15551230002")
PATIENT_IDS = ("pat-annabel-q", "pat-barth-x")
VENDOR_DEVICE = "SN-ZX-90210"
NOTE = "Called Annabel Quarterman at +15551230001, took her meds late"
NURSE = "staff:ingrid.oyelaran"  # how alert events name the signed-in caller


@pytest.mark.parametrize(
    ("born", "on", "band"),
    [
        (date(2000, 6, 15), date(2000, 6, 15), "0-4"),
        (date(2000, 6, 15), date(2005, 6, 14), "0-4"),  # the day before the 5th birthday
        (date(2000, 6, 15), date(2005, 6, 15), "5-9"),
        (date(1936, 3, 1), date(2026, 2, 28), "85-89"),  # 89 years and 364 days
        (date(1936, 3, 1), date(2026, 3, 1), "90+"),  # 90: Safe Harbor's top category
        (date(1920, 1, 1), date(2026, 1, 1), "90+"),
        (date(1984, 2, 29), date(2024, 2, 28), "35-39"),  # leap-day birth, not yet 40
        (date(1984, 2, 29), date(2024, 2, 29), "40-44"),
        (None, date(2026, 1, 1), ""),
        (date(2027, 1, 1), date(2026, 1, 1), ""),  # born after the date: unknown, not negative
    ],
)
def test_age_bands_at_their_boundaries(born: date | None, on: date, band: str) -> None:
    assert age_band(born, on) == band


def test_key_is_required_long_and_single(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="no export key"):
        load_key(ExportSettings())
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        load_key(ExportSettings(key=SecretStr("short")))
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("RPM_EXPORT_KEY_FILE", str(key_file))
    assert load_key(ExportSettings()) == KEY.encode()
    monkeypatch.setenv("RPM_EXPORT_KEY", KEY)
    with pytest.raises(ValueError, match="not both"):
        Settings()
    monkeypatch.delenv("RPM_EXPORT_KEY")
    monkeypatch.setenv("RPM_EXPORT_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot read"):
        Settings()


def test_pseudonyms_separate_kinds_and_keys() -> None:
    p, q = Pseudonyms(KEY.encode()), Pseudonyms(OTHER_KEY.encode())
    assert p("patient", "x") == p("patient", "x") != p("device", "x")
    assert p("patient", "x") != q("patient", "x")
    assert p.fingerprint() != q.fingerprint()
    assert p.actor("system:rules") == "system:rules"
    assert p.actor(NURSE) != NURSE
    shifts = {p.shift(f"pat-{i}") for i in range(200)}
    assert len(shifts) > 100  # spread, whole days only, within the bound
    assert all(s.seconds == 0 and abs(s.days) <= 182 for s in shifts)


async def admin_headers(server: Server) -> dict[str, str]:
    """An admin's bearer token for the server's database (the API requires a principal)."""
    assert server.pool is not None
    return await staff_headers(server.pool, NURSE.removeprefix("staff:"))


@pytest.fixture
async def populated(server: Server) -> str:
    """Two patients (names, phones, birth dates), a vendor device, readings and an alert
    acknowledged and resolved by a nurse with a note naming the patient."""
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.settings.api.port}",
        timeout=15,
        headers=await admin_headers(server),
    ) as api:
        for pid, name, phone, born, program in zip(
            PATIENT_IDS,
            NAMES,
            PHONES,
            ("1941-05-02", "1990-12-31"),
            ("hypertension", "copd"),
            strict=True,
        ):
            r = await api.post(
                "/api/patients",
                json={
                    "id": pid,
                    "display_name": name,
                    "phone": phone,
                    "sms_consent": True,
                    "programs": [program],
                    "birth_date": born,
                },
            )
            assert r.status_code == 201, r.text
        r = await api.post(
            "/api/integrations",
            json={"id": "vendor-q", "name": "Q", "auth": "hmac", "formats": ["canonical"]},
        )
        secret = r.json()["secret"]
        r = await api.post(
            "/api/devices",
            json={
                "id": VENDOR_DEVICE,
                "kind": "bp_cuff",
                "integration": "vendor-q",
                "patient_id": PATIENT_IDS[0],
                "bound_from": (datetime.now(UTC) - timedelta(days=2)).isoformat(),
                "actor": "admin:test",
            },
        )
        assert r.status_code == 201, r.text
        now = datetime.now(UTC).replace(microsecond=0)
        payload = json.dumps(
            [
                {
                    "device_id": VENDOR_DEVICE,
                    "metric": "blood_pressure",
                    "measured_at": (now - timedelta(minutes=m)).isoformat(),
                    "values": {"systolic": s, "diastolic": 88},
                }
                for m, s in ((30, 128), (20, 131), (10, 196))
            ]
        ).encode()
        r = await api.post(
            "/ingest/canonical",
            content=payload,
            headers={
                "X-RPM-Integration": "vendor-q",
                "X-RPM-Signature": sign(secret, payload, int(time.time())),
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["stored"] == 3
        alerts = (await api.get("/api/alerts", params={"patient": PATIENT_IDS[0]})).json()
        assert alerts, "a systolic of 196 opens an alert"
        alert_id = alerts[0]["id"]
        r = await api.post(f"/api/alerts/{alert_id}/acknowledge", json={"actor": NURSE})
        assert r.status_code == 200, r.text
        r = await api.post(f"/api/alerts/{alert_id}/resolve", json={"actor": NURSE, "note": NOTE})
        assert r.status_code == 200, r.text
        r = await api.post(
            f"/api/patients/{PATIENT_IDS[0]}/interactions",
            json={"channel": "phone", "ref": "call-about-the-alert"},
        )
        assert r.status_code == 201, r.text
    return server.settings.database.url.get_secret_value()


async def rpm_export(
    db_url: str, out: Path, *args: str, key: str | None = KEY
) -> tuple[int, str, str]:
    """The real command in a child process, configured through the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env["RPM_DATABASE_URL"] = db_url
    if key is not None:
        env["RPM_EXPORT_KEY"] = key
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rpm.cli",
        "export",
        "--out",
        str(out),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def table(out: Path, name: str) -> list[dict[str, str]]:
    with (out / f"{name}.csv").open(newline="") as f:
        return list(csv.DictReader(f))


async def test_export_holds_no_identity_and_joins_across_runs(
    populated: str, tmp_path: Path
) -> None:
    first, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, key in ((first, KEY), (again, KEY), (other, OTHER_KEY)):
        code, stdout, stderr = await rpm_export(populated, out, key=key)
        assert code == 0, stderr
        assert "readings.csv: 3 rows" in stdout
    manifest = json.loads((first / "manifest.json").read_text())
    assert {n: f["rows"] for n, f in manifest["files"].items()} == {
        "patients.csv": 2,
        "readings.csv": 3,
        "alerts.csv": 1,
        "alert_events.csv": len(table(first, "alert_events")),
        "reading_days.csv": len({r["measured_at"][:10] for r in table(first, "readings")}),
        "interactions.csv": len(table(first, "interactions")),
    }
    assert manifest["key_fingerprint"] == Pseudonyms(KEY.encode()).fingerprint()
    assert len(table(first, "alert_events")) >= 3  # opened, acknowledged, resolved

    # Nothing identifying, anywhere in any file (the manifest included).
    forbidden = [
        *NAMES,
        *(n.split()[1] for n in NAMES),
        *PHONES,
        *(p.lstrip("+") for p in PHONES),
        *PATIENT_IDS,
        VENDOR_DEVICE,
        "vendor-q",
        NOTE,
        "meds late",
        NURSE,
        "ingrid",
        KEY,
        "1941-05-02",
        "1990-12-31",
    ]
    for path in first.iterdir():
        text = path.read_text()
        for word in forbidden:
            assert word.lower() not in text.lower(), (path.name, word)

    p = Pseudonyms(KEY.encode())
    patients = {r["patient"]: r for r in table(first, "patients")}
    assert patients[p("patient", PATIENT_IDS[0])]["age_band"] in ("80-84", "85-89")
    assert patients[p("patient", PATIENT_IDS[1])]["programs"] == "copd"
    readings = table(first, "readings")
    assert {r["patient"] for r in readings} == {p("patient", PATIENT_IDS[0])}
    assert {r["device"] for r in readings} == {p("device", f"vendor-q:{VENDOR_DEVICE}")}
    assert sorted(json.loads(r["values"])["systolic"] for r in readings) == [128, 131, 196]
    (alert,) = table(first, "alerts")
    assert alert["state"] == "resolved"
    assert alert["acknowledged_by"] == alert["resolved_by"] == p("staff", NURSE)
    assert alert["last_reading"] in {r["reading"] for r in readings}
    events = table(first, "alert_events")
    assert {e["alert"] for e in events} == {alert["alert"]}
    # The ledger: the nurse's call (and the alert's SMS, if the worker sent it by now).
    calls = [i for i in table(first, "interactions") if i["kind"] == "nurse"]
    assert [(c["patient"], c["channel"], c["direction"]) for c in calls] == [
        (p("patient", PATIENT_IDS[0]), "phone", "outbound")
    ]
    assert {d["patient"] for d in table(first, "reading_days")} == {p("patient", PATIENT_IDS[0])}

    # Same key: the same files, byte for byte. Another key: no pseudonym in common.
    for name in ("patients", "readings", "alerts", "alert_events", "reading_days"):
        assert (first / f"{name}.csv").read_bytes() == (again / f"{name}.csv").read_bytes()
    ours = {r["patient"] for r in table(first, "patients")} | {r["reading"] for r in readings}
    theirs = {r["patient"] for r in table(other, "patients")}
    theirs |= {r["reading"] for r in table(other, "readings")}
    assert len(theirs) == len(ours)
    assert not ours & theirs


async def test_export_filters_shifts_and_refuses(populated: str, tmp_path: Path) -> None:
    p = Pseudonyms(KEY.encode())
    code, _, stderr = await rpm_export(populated, tmp_path / "htn", "--programs", "hypertension")
    assert code == 0, stderr
    assert [r["patient"] for r in table(tmp_path / "htn", "patients")] == [
        p("patient", PATIENT_IDS[0])
    ]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    code, _, stderr = await rpm_export(populated, tmp_path / "later", "--from", tomorrow)
    assert code == 0, stderr
    assert table(tmp_path / "later", "readings") == []

    code, _, stderr = await rpm_export(populated, tmp_path / "plain")
    assert code == 0, stderr
    code, _, stderr = await rpm_export(populated, tmp_path / "shifted", "--shift-dates")
    assert code == 0, stderr
    shift = p.shift(PATIENT_IDS[0])
    plain = sorted(r["measured_at"] for r in table(tmp_path / "plain", "readings"))
    moved = sorted(r["measured_at"] for r in table(tmp_path / "shifted", "readings"))
    assert [datetime.fromisoformat(a) + shift for a in plain] == [
        datetime.fromisoformat(b) for b in moved
    ]
    assert json.loads((tmp_path / "shifted" / "manifest.json").read_text())["dates_shifted"]

    code, stdout, stderr = await rpm_export(populated, tmp_path / "nokey", key=None)
    assert code == 2
    assert "no export key" in stderr
    assert stdout == ""
    assert not (tmp_path / "nokey").exists()
    code, _, stderr = await rpm_export(populated, tmp_path / "plain")
    assert code == 2
    assert "not empty" in stderr


async def test_registration_refuses_future_birth_dates_and_unknown_time_zones(
    server: Server,
) -> None:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.settings.api.port}",
        timeout=15,
        headers=await admin_headers(server),
    ) as api:
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
        base = {"id": "pat-z", "display_name": "Z"}
        for bad in ({"birth_date": tomorrow}, {"timezone": "--encoding=UTF8"}):
            r = await api.post("/api/patients", json=base | bad)
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"] == ["body", next(iter(bad))]
        r = await api.post(
            "/api/patients", json=base | {"birth_date": "1950-01-31", "timezone": "Europe/Paris"}
        )
        assert r.status_code == 201, r.text
