"""The edges of ``rpm rules backtest``: readings from the database or a CSV file, rule
sets from program files, and the report as a table and as JSON.

``rpm.backtest.replay`` is the pure replay; this module feeds it and prints what it found.

CSV input has one reading per row: ``patient_id``, ``metric`` (``blood_pressure``,
``weight``, ...), ``measured_at`` (ISO 8601; UTC when it has no offset), then one column
per component named as in ``rpm.domain.METRICS`` (``systolic``, ``diastolic``, ``pulse``,
``spo2``, ``weight``, ``glucose``, ``temperature``, ``respiratory_rate``), empty where
a row has no such value. Optional columns: ``programs`` (``heart_failure;copd``, the
patient's programs) and ``device_id``. Implausible values are left out as production's
validation would quarantine them; a malformed row stops the run with its line number.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import asyncpg

from rpm.backtest.burden import SEVERITIES, Burden, Comparison, Options
from rpm.backtest.replay import Replay, Span
from rpm.domain import METRICS, AcceptedReading, Metric, Reading
from rpm.domain.errors import StorageError
from rpm.storage import registry
from rpm.storage.patient_readings import of_patients
from rpm.storage.pool import DATABASE_UNAVAILABLE, Conn, connect
from rpm.storage.reading_values import values_of
from rpm.validation import implausibility
from rules.engine import PatientContext
from rules.programs import RuleBook, parse_document

CSV_REQUIRED = ("patient_id", "metric", "measured_at")
CHUNK = 20_000
# The database away, or refusing us (no such database, wrong password, missing table).
_DATABASE_FAILED: tuple[type[Exception], ...] = (*DATABASE_UNAVAILABLE, asyncpg.PostgresError)

# --- command-line values ----------------------------------------------------------


def parse_when(text: str) -> datetime:
    """``2026-01-31`` (midnight UTC) or an ISO 8601 time (UTC when it has no offset)."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_until(text: str) -> datetime:
    """The end of a period: a bare date counts as a whole day (``--to 2026-01-31``)."""
    t = parse_when(text)
    return t + timedelta(days=1) if len(text.strip()) == len("2026-01-31") else t


def parse_names(text: str) -> tuple[str, ...]:
    """``a,b`` or ``a;b`` -> ``("a", "b")``."""
    return tuple(n.strip() for n in text.replace(";", ",").split(",") if n.strip())


# --- rule sets ----------------------------------------------------------------------


def book_with(base: RuleBook, files: Iterable[Path]) -> RuleBook:
    """``base`` with programs from YAML/JSON files added or replacing those of that name."""
    programs = dict(base.programs)
    for path in files:
        text = _read(path)
        try:
            spec = parse_document(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        programs[spec.program] = spec
    return RuleBook(programs)


# --- CSV ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CsvData:
    readings: list[AcceptedReading]  # in measured-time order
    contexts: dict[str, PatientContext]
    refused: list[str] = field(default_factory=list)  # "line 7: ..." per row left out


_COMPONENT_NAMES = frozenset(c.name for spec in METRICS.values() for c in spec.components)


def read_csv(lines: Iterable[str], default_programs: Sequence[str] = ()) -> CsvData:
    """Readings and patients' programs from CSV text; ``ValueError`` names a bad line."""
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    absent = [c for c in CSV_REQUIRED if c not in header]
    if absent:
        raise ValueError(f"the CSV needs columns {', '.join(CSV_REQUIRED)}; missing {absent}")
    readings: list[AcceptedReading] = []
    refused: list[str] = []
    programs: dict[str, tuple[tuple[str, ...], int]] = {}
    seen: dict[tuple[str, str, datetime], int] = {}
    names: dict[str, tuple[str, ...]] = {}  # a programs cell repeats on every row
    for row in reader:
        line = reader.line_num
        pid = (row["patient_id"] or "").strip()
        if not pid:
            raise ValueError(f"line {line}: no patient_id")
        cell = row.get("programs") or ""
        named = names.get(cell) or names.setdefault(cell, parse_names(cell))
        if named:
            before = programs.setdefault(pid, (named, line))
            if before[0] != named:
                raise ValueError(
                    f"line {line}: patient {pid} has programs {';'.join(named)}, "
                    f"but {';'.join(before[0])} on line {before[1]}"
                )
        reading = _reading(row, line, pid)
        key = (reading.device_id, reading.metric.value, reading.measured_at)
        if key in seen:
            refused.append(f"line {line}: the same reading as line {seen[key]}")
            continue
        seen[key] = line
        problem = implausibility(reading)
        if problem is not None:
            refused.append(f"line {line}: {problem}")
            continue
        readings.append(AcceptedReading(reading, pid))
    readings.sort(key=lambda a: a.reading.measured_at)
    contexts = {
        a.patient_id: PatientContext(
            a.patient_id, programs.get(a.patient_id, (tuple(default_programs), 0))[0]
        )
        for a in readings
    }
    return CsvData(readings, contexts, refused)


def _reading(row: Mapping[str, str | None], line: int, patient_id: str) -> Reading:
    try:
        metric = Metric((row["metric"] or "").strip())
    except ValueError:
        known = ", ".join(m.value for m in Metric)
        raise ValueError(f"line {line}: unknown metric {row['metric']!r} ({known})") from None
    try:
        at = parse_when((row["measured_at"] or "").strip())
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"line {line}: {exc}") from None
    spec = METRICS[metric]
    values: dict[str, float] = {}
    for name in _COMPONENT_NAMES:
        cell = (row.get(name) or "").strip()
        if not cell:
            continue
        if spec.component(name) is None:
            raise ValueError(f"line {line}: {metric.value} has no component {name!r}")
        try:
            values[name] = float(cell)
        except ValueError:
            raise ValueError(f"line {line}: {name} is not a number: {cell!r}") from None
    lacking = [c.name for c in spec.components if c.required and c.name not in values]
    if lacking:
        raise ValueError(f"line {line}: {metric.value} needs {', '.join(lacking)}")
    device = (row.get("device_id") or "").strip() or f"csv:{patient_id}"
    return Reading(device, metric, values, at, at)


# --- the database ------------------------------------------------------------------

# The readings of a period in measured-time order (TimescaleDB: chunk by chunk), without those
# marked entered-in-error (migration 0029), which production's rules no longer use either.
_READINGS = f"""
SELECT measured_at, device_id, metric, patient_id, v1, v2, v3, received_at
  FROM readings
 WHERE NOT EXISTS (SELECT 1 FROM reading_corrections c
                    WHERE c.device_id = readings.device_id AND c.metric = readings.metric::text
                      AND c.measured_at = readings.measured_at)
   AND ($1::timestamptz IS NULL OR measured_at >= $1)
   AND ($2::timestamptz IS NULL OR measured_at < $2)
   AND ($3::text[] IS NULL OR ({of_patients("$3::text[]")}))
 ORDER BY measured_at"""  # noqa: S608 - a fixed fragment

# Device bindings: when production's missing-data timer watched each patient.
_BINDINGS = """
SELECT patient_id, lower(during) AS since, upper(during) AS until
  FROM device_bindings WHERE patient_id = ANY($1::text[])"""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Readings in time order, and the contexts and watch periods of patients new in them."""

    readings: list[AcceptedReading]
    contexts: dict[str, PatientContext]
    watch: dict[str, list[Span]]


async def stream_database(
    conn: Conn,
    *,
    since: datetime | None,
    until: datetime | None,
    patients: Sequence[str] = (),
    programs: Sequence[str] | None = None,
    chunk: int = CHUNK,
) -> AsyncIterator[Chunk]:
    """Stored readings of the period, oldest first, in chunks, from one snapshot.

    Patients keep their stored programs and overrides unless ``programs`` replaces both.
    """
    known: set[str] = set()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        batch: list[AcceptedReading] = []
        cursor = conn.cursor(_READINGS, since, until, list(patients) or None, prefetch=chunk)
        async for r in cursor:
            metric = Metric(r["metric"])
            values = values_of(metric, r["v1"], r["v2"], r["v3"])
            reading = Reading(r["device_id"], metric, values, r["measured_at"], r["received_at"])
            batch.append(AcceptedReading(reading, r["patient_id"]))
            if len(batch) >= chunk:
                yield await _chunk(conn, batch, known, programs)
                batch = []
        if batch:
            yield await _chunk(conn, batch, known, programs)


async def _chunk(
    conn: Conn, batch: list[AcceptedReading], known: set[str], programs: Sequence[str] | None
) -> Chunk:
    new = {a.patient_id for a in batch} - known
    known |= new
    if programs is None:
        contexts = await registry.patient_contexts(conn, new)
    else:
        contexts = {p: PatientContext(p, tuple(programs)) for p in new}
    watch: dict[str, list[Span]] = {}
    if new:
        for row in await conn.fetch(_BINDINGS, list(new)):
            watch.setdefault(row["patient_id"], []).append((row["since"], row["until"]))
    return Chunk(batch, contexts, watch)


# --- the run ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One ``rpm rules backtest`` run, as the command line asked for it."""

    options: Options
    csv: Path | None = None
    database_url: str | None = None
    patients: tuple[str, ...] = ()
    programs: tuple[str, ...] | None = None  # None: stored (DB) or the CSV's own
    program_files: tuple[Path, ...] = ()
    compare_files: tuple[Path, ...] = ()
    json_path: Path | None = None


def run(request: Request, out: TextIO, err: TextIO) -> int:
    """Replay, print the table to ``out``, write the JSON. Exit status 2: bad input; 1: the
    database failed."""
    try:
        return _run(request, out)
    except ValueError as exc:
        err.write(f"rpm rules backtest: {exc}\n")
        return 2
    except StorageError as exc:
        err.write(f"rpm rules backtest: {exc}\n")
        return 1


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:  # a file the user named: their input, not our failure
        raise ValueError(f"{path}: {exc.strerror}") from None


def _run(request: Request, out: TextIO) -> int:
    baseline = book_with(RuleBook.builtin(), request.program_files)
    books = [baseline]
    if request.compare_files:
        books.append(book_with(baseline, request.compare_files))
    known = {name for book in books for name in book.programs}
    unknown = sorted(set(request.programs or ()) - known)
    if unknown:
        raise ValueError(f"unknown programs {unknown}; known: {sorted(known)}")
    replays = [Replay(book, request.options) for book in books]
    refused: list[str] = []
    if request.csv is not None:
        data = read_csv(_read(request.csv).splitlines(keepends=True), request.programs or ())
        wanted = set(request.patients)
        readings = [a for a in data.readings if not wanted or a.patient_id in wanted]
        for replay in replays:
            replay.feed(readings, data.contexts)
        refused = data.refused
    else:
        if not request.database_url:
            raise ValueError("give --csv FILE or a database (--database-url, RPM_DATABASE_URL)")
        try:
            asyncio.run(_feed_database(request, request.database_url, replays))
        except _DATABASE_FAILED as exc:
            raise StorageError(f"database: {exc.__class__.__name__}: {exc}") from exc
    burdens = [r.finish() for r in replays]
    labels = ("baseline", "candidate")
    report: dict[str, Any]
    if len(burdens) == 2:
        comparison = Comparison(burdens[0], burdens[1], labels)
        out.write(render_comparison(comparison, _describe(request)))
        report = comparison.as_json()
    else:
        out.write(render(burdens[0]))
        report = burdens[0].as_json()
    report["input"] = {
        "source": "database" if request.csv is None else str(request.csv),
        "refused_rows": refused,
        "programs": list(request.programs) if request.programs is not None else None,
        "program_files": [str(p) for p in request.program_files],
        "compare_files": [str(p) for p in request.compare_files],
    }
    if refused:
        shown = "".join(f"  - {r}\n" for r in refused[:5])
        more = f"  ... and {len(refused) - 5} more\n" if len(refused) > 5 else ""
        out.write(f"\n{len(refused)} CSV row(s) left out:\n{shown}{more}")
    if request.json_path is not None:
        try:
            request.json_path.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise ValueError(f"{request.json_path}: {exc.strerror}") from None
    return 0


def _describe(request: Request) -> list[str]:
    base = " + ".join(["built-in programs", *(p.name for p in request.program_files)])
    compared = " + ".join(p.name for p in request.compare_files)
    return [f"baseline: {base}", f"candidate: baseline + {compared}"]


async def _feed_database(request: Request, url: str, replays: Sequence[Replay]) -> None:
    start = request.options.start
    warm_up = max(r.lookback for r in replays)
    conn = await connect(url)
    try:
        async for chunk in stream_database(
            conn,
            since=start - warm_up if start is not None else None,
            until=request.options.end,
            patients=request.patients,
            programs=request.programs,
        ):
            for replay in replays:
                replay.feed(chunk.readings, chunk.contexts, chunk.watch)
    finally:
        await conn.close()


# --- the printed report -------------------------------------------------------------


def _header(b: Burden) -> list[str]:
    o = b.options
    return [
        f"Alert burden backtest, {b.start:%Y-%m-%d %H:%M} to {b.end:%Y-%m-%d %H:%M} UTC "
        f"({b.days:g} days)",
        f"  {b.patients} patients, {b.readings:,} readings; {b.nurses} nurse(s) at "
        f"{o.patients_per_nurse} patients per nurse",
        f"  a nurse resolves each alert {o.resolve_after / timedelta(hours=1):g} h after it "
        f"opens; missing-data timer every {o.step / timedelta(minutes=1):g} min",
        "",
    ]


def _notes(notes: Iterable[str]) -> list[str]:
    notes = list(notes)
    return ["", "Notes:", *(f"  - {n}" for n in notes)] if notes else []


def _before_grouping(b: Burden) -> list[str]:
    """The burden one episode per rule would have given (docs/alerts.md: one row per event)."""
    before = b.ungrouped_per_patient_month
    if b.ungrouped is None or before is None:
        return []
    return [
        f"  before grouping         {before:.2f} ({b.ungrouped} alerts, one per rule; "
        f"{len(b.alerts)} as clinical events)"
    ]


def _confirmations(b: Burden) -> list[str]:
    """Confirm before paging, per rule that has it (docs/alerts.md)."""
    rows = [r for r in sorted(b.per_rule.values(), key=lambda r: r.rule_id) if r.confirm]
    if not rows:
        return []
    width = max(len(r.rule_id) for r in rows)

    def minutes(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [
        "",
        "confirm before paging (first readings held; alerts avoided; minutes added to pages)",
        f"{'rule':<{width}}  {'held':>6}{'not confd':>11}{'avoided':>9}{'median':>8}{'p95':>7}",
    ]
    for r in rows:
        c = r.confirm
        assert c is not None
        lines.append(
            f"{r.rule_id:<{width}}  {c.held:>6}{c.not_confirmed:>11}{c.avoided:>9}"
            f"{minutes(c.delay_median_min):>8}{minutes(c.delay_p95_min):>7}"
        )
    return lines


def render(b: Burden) -> str:
    """The table ``rpm rules backtest`` prints: alerts per rule and severity, then rates."""
    rows = sorted(b.per_rule.values(), key=lambda r: (-r.alerts, r.rule_id))
    width = max([len("total"), *(len(r.rule_id) for r in rows)])
    names = [s.name.lower() for s in SEVERITIES]
    head = f"{'rule':<{width}}  {'program':<14}{'alerts':>7}" + "".join(f"{n:>9}" for n in names)
    lines = [*_header(b), head + f"{'patients':>9}"]
    for r in rows:
        sev = "".join(f"{r.by_severity.get(n, 0):>9}" for n in names)
        lines.append(f"{r.rule_id:<{width}}  {r.program:<14}{r.alerts:>7}{sev}{r.patients:>9}")
    totals = b.by_severity()
    sev = "".join(f"{totals[n]:>9}" for n in names)
    lines.append(f"{'total':<{width}}  {'':<14}{len(b.alerts):>7}{sev}{b.patients_alerted:>9}")
    lines += [
        "",
        f"alerts per patient-month  {b.alerts_per_patient_month:.2f}",
        *_before_grouping(b),
        f"alerts per nurse-day      {b.alerts_per_nurse_day:.2f}",
        f"patients with an alert    {b.patients_alerted} of {b.patients} "
        f"({b.share_patients_alerted:.0%})",
        *_confirmations(b),
        *_notes(b.notes),
    ]
    return "\n".join(lines) + "\n"


def render_comparison(cmp: Comparison, described: Sequence[str] = ()) -> str:
    """Baseline and candidate side by side, with the change per rule."""
    b, c = cmp.baseline, cmp.candidate
    ids = cmp.rule_ids()
    width = max([len("alerts per patient-month"), *(len(r) for r in ids)])
    left, right = (label[:12] for label in cmp.labels)

    def count(burden: Burden, rule_id: str) -> int:
        r = burden.per_rule.get(rule_id)
        return r.alerts if r else 0

    def row(name: str, x: float, y: float, fmt: str = ".2f") -> str:
        d = y - x
        delta = f"{d:+{fmt}}" if d else "0"
        return f"{name:<{width}}  {x:>12{fmt}}{y:>12{fmt}}{delta:>9}"

    header = _header(b)
    lines = [*header[:-1], *(f"  {d}" for d in described), ""]
    lines.append(f"{'rule':<{width}}  {left:>12}{right:>12}{'delta':>9}")
    ids.sort(key=lambda r: (-max(count(b, r), count(c, r)), r))
    lines += [row(r, count(b, r), count(c, r), "d") for r in ids]
    lines += [
        row("total", len(b.alerts), len(c.alerts), "d"),
        "",
        row("alerts per patient-month", b.alerts_per_patient_month, c.alerts_per_patient_month),
        *(
            [row("  before grouping", before_b, before_c)]
            if (before_b := b.ungrouped_per_patient_month) is not None
            and (before_c := c.ungrouped_per_patient_month) is not None
            else []
        ),
        row("alerts per nurse-day", b.alerts_per_nurse_day, c.alerts_per_nurse_day),
        row("patients with an alert", b.patients_alerted, c.patients_alerted, "d"),
        *_notes([*b.notes, *(f"{cmp.labels[1]}: {n}" for n in c.notes if n not in b.notes)]),
    ]
    return "\n".join(lines) + "\n"
