"""Pseudonymised export for analytics (``rpm export``): readings and alerts as CSV files.

What leaves: measured values, metrics, rule ids and severities, alert lifecycle times, and
per patient a 5-year age band and the care programs. Identifiers (patient, device, reading,
alert, audit-event and staff ids) are replaced by keyed hashes, HMAC-SHA256 under the
export key (RFC 2104), so the same key gives the same pseudonyms and exports join.
What never leaves: names, phone numbers, birth dates, free text that may name someone
(alert resolution notes, audit notes, SMS bodies, explanations), vendor serials.

This is pseudonymisation (GDPR art. 4(5)): whoever holds the key, or the database, can
re-identify. It is not HIPAA de-identification: Safe Harbor (45 CFR 164.514(b)(2)) would
also need every date reduced to its year; ``shift_dates`` moves each patient's times by
a keyed whole number of days instead, which keeps intervals and times of day.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from rpm.domain.errors import ConfigurationError
from rpm.settings import ExportSettings, Settings
from rpm.storage import export as export_store
from rpm.storage.pool import connect
from rpm.storage.reading_values import row_values

FORMAT = "rpm-export/1"
MIN_KEY_BYTES = 32
PSEUDONYM_HEX = 32  # 128 bits of the HMAC: collisions are out of reach for any registry
MAX_SHIFT_DAYS = 182
# Ages in 5-year bands; HIPAA Safe Harbor lets ages over 89 appear only as one category
# "90 or older" (45 CFR 164.514(b)(2)(i)(C)).
BAND_YEARS = 5
TOP_AGE = 90
# Evidence keys that hold identifiers (rules/engine.py adds reading_uid and device_id).
_EVIDENCE_IDS = {"reading_uid": "reading", "device_id": "device", "patient_id": "patient"}


# --- the pure core --------------------------------------------------------------------


def load_key(settings: ExportSettings) -> bytes:
    """The export key from RPM_EXPORT_KEY, or the file RPM_EXPORT_KEY_FILE names (rpm.settings)."""
    if settings.key is None:
        raise ConfigurationError(
            "no export key: set RPM_EXPORT_KEY or RPM_EXPORT_KEY_FILE (see README, Export)"
        )
    key = settings.key.get_secret_value().encode()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"the export key must have at least {MIN_KEY_BYTES} bytes")
    return key


@dataclass(frozen=True, slots=True)
class Pseudonyms:
    """Keyed pseudonyms; ``kind`` separates namespaces so equal ids of two kinds differ."""

    key: bytes

    def __call__(self, kind: str, value: object) -> str:
        mac = hmac.new(self.key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:PSEUDONYM_HEX]

    def fingerprint(self) -> str:
        """Names the key in manifests without revealing it."""
        return self("key-fingerprint", FORMAT)[:16]

    def shift(self, patient_id: str) -> timedelta:
        """The patient's date shift: whole days in [-MAX_SHIFT_DAYS, MAX_SHIFT_DAYS]."""
        n = int(self("date-shift", patient_id), 16) % (2 * MAX_SHIFT_DAYS + 1)
        return timedelta(days=n - MAX_SHIFT_DAYS)

    def actor(self, actor: str | None) -> str:
        """Staff actors become pseudonyms; the system's own (``system:...``) stay readable."""
        if actor is None:
            return ""
        return actor if actor.startswith("system:") else self("staff", actor)


def age_band(birth: date | None, on: date) -> str:
    """``"35-39"``, ``"90+"``, or ``""`` when the birth date is unknown or after ``on``."""
    if birth is None or birth > on:
        return ""
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if age >= TOP_AGE:
        return f"{TOP_AGE}+"
    low = age - age % BAND_YEARS
    return f"{low}-{low + BAND_YEARS - 1}"


@dataclass(frozen=True, slots=True)
class Options:
    start: datetime | None = None
    end: datetime | None = None
    programs: tuple[str, ...] | None = None
    shift_dates: bool = False


@dataclass(frozen=True, slots=True)
class _Row:
    """What a transform needs besides the record: pseudonyms, shift switch, age date."""

    p: Pseudonyms
    shift_dates: bool
    as_of: date

    def when(self, t: datetime | None, patient_id: str) -> str:
        if t is None:
            return ""
        if self.shift_dates:
            t = t + self.p.shift(patient_id)
        return t.astimezone(UTC).isoformat()

    def evidence(self, value: Any, patient_id: str) -> Any:
        if isinstance(value, dict):
            return {k: self._evidence_item(k, v, patient_id) for k, v in value.items()}
        if isinstance(value, list):
            return [self.evidence(v, patient_id) for v in value]
        return value

    def _evidence_item(self, key: str, value: Any, patient_id: str) -> Any:
        if key in _EVIDENCE_IDS and value is not None:
            return self.p(_EVIDENCE_IDS[key], value)
        if key.endswith("_at") and isinstance(value, str) and self.shift_dates:
            try:
                return self.when(datetime.fromisoformat(value), patient_id)
            except ValueError:
                return None  # not a time after all: drop rather than leak it unshifted
        return self.evidence(value, patient_id)


def _json(value: object) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _patient(r: asyncpg.Record, x: _Row) -> list[object]:
    return [x.p("patient", r["id"]), age_band(r["birth_date"], x.as_of), ";".join(r["programs"])]


def _reading(r: asyncpg.Record, x: _Row) -> list[object]:
    pid = r["patient_id"]
    return [
        x.p("reading", r["uid"]),
        x.p("patient", pid),
        x.p("device", r["device_id"]),
        r["metric"],
        x.when(r["measured_at"], pid),
        x.when(r["received_at"], pid),
        _json(row_values(r)),
        _json(r["original"]),
        r["interpretation"] or "",
        "entered-in-error" if r["entered_in_error"] else "final",
    ]


def _alert(r: asyncpg.Record, x: _Row) -> list[object]:
    pid = r["patient_id"]
    uid = r["first_reading_uid"], r["last_reading_uid"]
    return [
        x.p("alert", r["id"]),
        x.p("patient", pid),
        r["rule_id"],
        r["program"] or "",
        r["severity"],
        r["state"],
        r["title"],
        _json(x.evidence(r["evidence"], pid)),
        x.p("reading", uid[0]) if uid[0] else "",
        x.p("reading", uid[1]) if uid[1] else "",
        r["occurrences"],
        x.when(r["opened_at"], pid),
        x.when(r["updated_at"], pid),
        x.when(r["acknowledged_at"], pid),
        x.p.actor(r["acknowledged_by"]),
        x.when(r["resolved_at"], pid),
        x.p.actor(r["resolved_by"]),
        r["escalation_tier"],
    ]


def _alert_event(r: asyncpg.Record, x: _Row) -> list[object]:
    pid = r["patient_id"]
    return [
        x.p("alert-event", r["id"]),
        x.p("alert", r["alert_id"]),
        x.p("patient", pid),
        x.when(r["at"], pid),
        x.p.actor(r["actor"]),
        r["action"],
        r["from_state"] or "",
        r["to_state"],
        r["severity"],
    ]


def _reading_day(r: asyncpg.Record, x: _Row) -> list[object]:
    pid = r["patient_id"]
    day: date = r["day"]
    if x.shift_dates:
        day = day + x.p.shift(pid)
    return [x.p("patient", pid), day.isoformat(), r["readings"], ";".join(r["metrics"])]


def _interaction(r: asyncpg.Record, x: _Row) -> list[object]:
    pid = r["patient_id"]
    return [
        x.p("interaction", r["id"]),
        x.p("patient", pid),
        x.when(r["at"], pid),
        r["kind"],
        r["channel"],
        r["direction"],
        r["campaign"] or "",
    ]


@dataclass(frozen=True, slots=True)
class _File:
    columns: tuple[str, ...]
    row: Callable[[asyncpg.Record, _Row], list[object]]


# One file per table: its columns and how a database row becomes a CSV row.
FILES: dict[str, _File] = {
    "patients": _File(("patient", "age_band", "programs"), _patient),
    "readings": _File(
        (
            "reading",
            "patient",
            "device",
            "metric",
            "measured_at",
            "received_at",
            "values",
            "original",
            "interpretation",
            "status",  # final, or entered-in-error (docs/fhir.md#corrections)
        ),
        _reading,
    ),
    "alerts": _File(
        (
            "alert",
            "patient",
            "rule_id",
            "program",
            "severity",
            "state",
            "title",
            "evidence",
            "first_reading",
            "last_reading",
            "occurrences",
            "opened_at",
            "updated_at",
            "acknowledged_at",
            "acknowledged_by",
            "resolved_at",
            "resolved_by",
            "escalation_tier",
        ),
        _alert,
    ),
    "alert_events": _File(
        (
            "event",
            "alert",
            "patient",
            "at",
            "actor",
            "action",
            "from_state",
            "to_state",
            "severity",
        ),
        _alert_event,
    ),
    # The interaction ledger (docs/engagement.md): days with readings, and every other touch.
    "reading_days": _File(("patient", "day", "readings", "metrics"), _reading_day),
    "interactions": _File(
        ("interaction", "patient", "at", "kind", "channel", "direction", "campaign"),
        _interaction,
    ),
}
assert set(FILES) == set(export_store.TABLES)


# --- the I/O shell --------------------------------------------------------------------


async def export(
    conn: asyncpg.Connection,
    out_dir: Path,
    key: bytes,
    options: Options,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Write one CSV per table and ``manifest.json`` into ``out_dir``; return the manifest."""
    now = now or datetime.now(UTC)
    _new_directory(out_dir)
    p = Pseudonyms(key)
    as_of = (options.end or now).astimezone(UTC).date()
    ctx = _Row(p, options.shift_dates, as_of)
    files: dict[str, Any] = {}
    # One snapshot for all files, so an alert's readings and events are all there.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for table, spec in FILES.items():
            path = out_dir / f"{table}.csv"
            count = 0
            with path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(spec.columns)
                async for record in export_store.rows(
                    conn, table, programs=options.programs, start=options.start, end=options.end
                ):
                    writer.writerow(spec.row(record, ctx))
                    count += 1
            files[path.name] = {"rows": count, "columns": list(spec.columns), "sha256": _sha(path)}
    manifest = {
        "format": FORMAT,
        "created_at": now.isoformat(),
        "from": options.start.isoformat() if options.start else None,
        "to": options.end.isoformat() if options.end else None,
        "programs": list(options.programs) if options.programs is not None else None,
        "age_bands_as_of": as_of.isoformat(),
        "dates_shifted": options.shift_dates,
        "pseudonyms": f"HMAC-SHA256, first {PSEUDONYM_HEX} hex digits, per kind of id",
        "key_fingerprint": p.fingerprint(),
        "files": files,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _new_directory(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty; export into a new directory")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


async def run(settings: Settings, out_dir: Path, options: Options) -> dict[str, Any]:
    """``rpm export``: the key from the settings (refused without one), then the files."""
    key = load_key(settings.export)
    conn = await connect(settings.database.url.get_secret_value())
    try:
        return await export(conn, out_dir, key, options)
    finally:
        await conn.close()


def summary(manifest: Mapping[str, Any]) -> Sequence[str]:
    """Lines for the terminal: files and row counts, and the key fingerprint."""
    lines = [f"{name}: {f['rows']} rows" for name, f in manifest["files"].items()]
    return [*lines, f"key fingerprint: {manifest['key_fingerprint']}"]
