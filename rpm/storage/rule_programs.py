"""SQL for rule programs as versioned data, and for audited per-patient rule overrides.

Every change of a program inserts a row of ``rule_program_versions``: publishing a new
spec, and activating an older version, which copies it forward as the newest version
with a note naming where it came from. So that table alone says what was active when
and who made it so, and ``stamp`` (its largest id) moves with every change. Every
writer takes one advisory transaction lock first, which keeps the version numbers
gapless and the ids in commit order: a reader that saw stamp N has seen every change
up to N.

Overrides live in ``patients.rule_overrides`` (``{rule_id: {param: value}}``), and
every change of them is a row of ``rule_override_events`` written in the same
transaction, with the patient's row locked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import asyncpg
from pydantic import ValidationError

from rpm.domain.errors import InvalidRequestError, RuleNotFound, StoredProgramInvalid
from rpm.storage.pool import Conn
from rules.programs import RuleBook, builtin_programs
from rules.spec import ProgramSpec, RuleSpec, parse_program

_LOCK = 0x52504D52  # advisory lock key of every writer of rule_program_versions ("RPMR")
BUILTIN_ACTOR = "system:builtin"


def validation_message(exc: ValueError) -> str:
    """Why a spec or override was refused, on one line (pydantic's text without its links)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"])
        what = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {what}" if where else what)
    return "; ".join(parts)


# --- programs ----------------------------------------------------------------------


async def seed_builtin(conn: Conn, actor: str = BUILTIN_ACTOR) -> list[str]:
    """Store each built-in program that has no version yet as its active version 1."""
    programs = builtin_programs()
    async with conn.transaction():
        await _lock(conn)
        stored = {
            r["program"]
            for r in await conn.fetch("SELECT DISTINCT program FROM rule_program_versions")
        }
        seeded = sorted(set(programs) - stored)
        await conn.executemany(
            """INSERT INTO rule_program_versions
                   (program, version, spec, digest, created_by, note, active)
               VALUES ($1, 1, $2, $3, $4, $5, true)""",
            [
                (
                    name,
                    _stored(programs[name]),
                    programs[name].digest,
                    actor,
                    f"built-in rules/programs/{name}.yaml",
                )
                for name in seeded
            ],
        )
    return seeded


async def active_versions(conn: Conn) -> list[dict[str, Any]]:
    """The active version of every program: number, digest, who and when, and the spec."""
    rows = await conn.fetch(
        """SELECT program, version, digest, created_at, created_by, note, spec
             FROM rule_program_versions WHERE active ORDER BY program"""
    )
    return [dict(r) for r in rows]


async def active_book(conn: Conn) -> RuleBook:
    """The active version of every program; raises ``StoredProgramInvalid`` if one no
    longer validates."""
    programs: dict[str, ProgramSpec] = {}
    versions: dict[str, int] = {}
    for row in await active_versions(conn):
        programs[row["program"]] = _parse_stored(row["program"], row["version"], row["spec"])
        versions[row["program"]] = row["version"]
    return RuleBook(MappingProxyType(programs), MappingProxyType(versions))


async def stamp(conn: Conn) -> int:
    """A number that changes whenever any program gets a new active version."""
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM rule_program_versions"))


async def publish(conn: Conn, spec: ProgramSpec, actor: str, note: str | None = None) -> int:
    """Make ``spec`` the active version of its program; returns its version number.

    A spec identical to the active one (same digest) adds no version.
    """
    async with conn.transaction():
        await _lock(conn)
        current = await _active(conn, spec.program)
        if current is not None and current["digest"] == spec.digest:
            return int(current["version"])
        return await _insert_active(conn, spec, actor, note)


async def versions(conn: Conn, program: str) -> list[dict[str, Any]]:
    """Every version of a program, newest first (without the specs)."""
    rows = await conn.fetch(
        """SELECT version, digest, created_at, created_by, note, active
             FROM rule_program_versions WHERE program = $1 ORDER BY version DESC""",
        program,
    )
    return [dict(r) for r in rows]


async def activate(
    conn: Conn, program: str, version: int, actor: str, note: str | None = None
) -> int:
    """Make an earlier version active again; returns the new active version number.

    The old spec is copied forward as a new version whose note names the version it came
    from, so the history stays a plain list of what became active, when and by whom.
    Activating what is already active changes nothing. Raises ``RuleNotFound``, or
    ``StoredProgramInvalid`` when today's rule kinds refuse the old spec.
    """
    async with conn.transaction():
        await _lock(conn)
        row = await conn.fetchrow(
            "SELECT spec FROM rule_program_versions WHERE program = $1 AND version = $2",
            program,
            version,
        )
        if row is None:
            raise RuleNotFound(f"program {program!r} has no version {version}")
        spec = _parse_stored(program, version, row["spec"])
        current = await _active(conn, program)
        if current is not None and current["digest"] == spec.digest:
            return int(current["version"])
        why = f"activated version {version}" + (f": {note}" if note else "")
        return await _insert_active(conn, spec, actor, why)


async def _lock(conn: Conn) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)


async def _active(conn: Conn, program: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT version, digest FROM rule_program_versions WHERE program = $1 AND active",
        program,
    )


async def _insert_active(conn: Conn, spec: ProgramSpec, actor: str, note: str | None) -> int:
    await conn.execute(
        "UPDATE rule_program_versions SET active = false WHERE program = $1 AND active",
        spec.program,
    )
    version = await conn.fetchval(
        """INSERT INTO rule_program_versions
               (program, version, spec, digest, created_by, note, active)
           SELECT $1, coalesce(max(version), 0) + 1, $2, $3, $4, $5, true
             FROM rule_program_versions WHERE program = $1
           RETURNING version""",
        spec.program,
        _stored(spec),
        spec.digest,
        actor,
        note,
    )
    return int(version)


def _stored(spec: ProgramSpec) -> dict[str, Any]:
    """The canonical JSON form (what ``digest`` hashes), as the jsonb codec takes it."""
    return spec.model_dump(mode="json")


def _parse_stored(program: str, version: int, spec: Mapping[str, Any]) -> ProgramSpec:
    try:
        return parse_program(spec)
    except ValueError as exc:
        raise StoredProgramInvalid(
            f"stored program {program} version {version} no longer validates: "
            + validation_message(exc)
        ) from exc


# --- per-patient overrides -----------------------------------------------------------


async def set_overrides(
    conn: Conn,
    patient_id: str,
    rule_id: str,
    params: Mapping[str, float] | None,
    actor: str,
    reason: str | None,
    book: RuleBook,
) -> dict[str, Any]:
    """Replace a patient's overrides of one rule (``None`` or empty: back to the defaults).

    Returns the rule as it now applies (see ``effective_rules``). Raises ``RuleNotFound`` for
    an unknown patient or a rule outside the patient's programs, ``InvalidRequestError`` for
    parameters the rule does not have or that make it invalid. A change is recorded in
    ``rule_override_events`` in the same transaction; no change records nothing.
    """
    new = {k: float(v) for k, v in params.items()} if params else None
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT programs, rule_overrides FROM patients WHERE id = $1 FOR UPDATE", patient_id
        )
        if row is None:
            raise RuleNotFound(f"no patient {patient_id!r}")
        programs = tuple(row["programs"])
        rule = book.rule(rule_id, programs)
        if rule is None:
            raise RuleNotFound(f"patient {patient_id!r} has no rule {rule_id!r}")
        if new is not None:
            _check(rule, new)
        overrides: dict[str, Any] = dict(row["rule_overrides"] or {})
        old = overrides.get(rule_id) or None
        if new != old:
            if new is None:
                overrides.pop(rule_id, None)
            else:
                overrides[rule_id] = new
            await conn.execute(
                "UPDATE patients SET rule_overrides = $2 WHERE id = $1", patient_id, overrides
            )
            await conn.execute(
                """INSERT INTO rule_override_events
                       (patient_id, rule_id, actor, old_params, new_params, reason)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                patient_id,
                rule_id,
                actor,
                old,
                new,
                reason,
            )
    return _effective(rule, new, book.versions.get(rule.program))


async def override_history(conn: Conn, patient_id: str) -> list[dict[str, Any]]:
    """Every change of a patient's rule parameters, oldest first."""
    rows = await conn.fetch(
        """SELECT id, rule_id, at, actor, old_params, new_params, reason
             FROM rule_override_events WHERE patient_id = $1 ORDER BY at, id""",
        patient_id,
    )
    return [dict(r) for r in rows]


def effective_rules(
    book: RuleBook, programs: Iterable[str], overrides: Mapping[str, Mapping[str, float]]
) -> list[dict[str, Any]]:
    """A patient's rules as they apply: effective and default params, what is overridden.

    A stored override that the active program refuses (a parameter it no longer has) is
    shown in ``override_error``; the engine applies the defaults then, and so does this.
    """
    return [
        _effective(rule, overrides.get(rule.id), book.versions.get(rule.program))
        for rule in book.rules_for(programs)
    ]


def _check(rule: RuleSpec, params: Mapping[str, float]) -> None:
    infinite = sorted(k for k, v in params.items() if not math.isfinite(v))
    if infinite:
        raise InvalidRequestError(f"parameters {infinite} must be finite numbers")
    try:
        rule.with_overrides(params)
    except ValueError as exc:
        raise InvalidRequestError(validation_message(exc)) from None


def _effective(
    rule: RuleSpec, override: Mapping[str, float] | None, version: int | None
) -> dict[str, Any]:
    applied, error = rule, None
    if override:
        try:
            applied = rule.with_overrides(override)
        except ValueError as exc:
            error = validation_message(exc)
    return {
        "id": rule.id,
        "program": rule.program,
        "program_version": version,
        "kind": rule.kind,
        "metric": rule.metric.value,
        "title": rule.title,
        "severity": rule.top_severity.name.lower(),
        "params": dict(applied.params),
        "defaults": dict(rule.params),
        "overridden": sorted(override) if override and error is None else [],
        "override_error": error,
        "source": rule.source,
        # Confirm before paging: the window in minutes as it applies (None: pages at once).
        "confirm": None
        if applied.confirm is None
        else {
            "minutes": applied.confirm.minutes,
            "default_minutes": rule.confirm.minutes if rule.confirm else None,
            "severities": sorted(s.name.lower() for s in applied.confirmed_severities),
        },
    }
