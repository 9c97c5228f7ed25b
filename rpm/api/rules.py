"""Rules API: care programs as versioned specs, and audited per-patient parameter overrides.

Refusals are errors of the tree (rpm/api/errors.py): an unknown program, version, patient
or rule 404, a document or override the rule kinds refuse 422.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import yaml
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field, FiniteFloat

from rpm.domain.errors import InvalidRequestError, NotFoundError
from rpm.storage import registry as patient_store
from rpm.storage import rule_programs
from rpm.storage import staff as staff_store
from rpm.storage.pool import Conn
from rules.programs import RuleBook
from rules.spec import ProgramSpec, parse_program

from .access import CanEditPatientRules, CanPublishRules, CanReadRules, Principal, audit
from .deps import PoolDep, held
from .registry import Actor

PROGRAM = r"^[a-z0-9_]+$"  # as ProgramSpec.program
MAX_DOCUMENT_BYTES = 1 << 20
JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
Note = Annotated[str, Field(min_length=1, max_length=2000)]
ProgramName = Annotated[str, Path(pattern=PROGRAM)]


class ProgramOut(BaseModel):
    program: str
    version: int
    digest: str
    created_at: datetime
    created_by: str
    note: str | None
    spec: dict[str, Any]


class VersionOut(BaseModel):
    version: int
    digest: str
    created_at: datetime
    created_by: str
    note: str | None
    active: bool


class PublishedOut(BaseModel):
    program: str
    version: int
    changed: bool  # false when the document equals the active version


class ActivateIn(BaseModel):
    version: Annotated[int, Field(ge=1)]
    actor: Actor | None = None  # ignored: the caller's principal is the actor
    note: Note | None = None


class _Metadata(BaseModel):
    """What a JSON program document may carry besides the program itself."""

    actor: Actor | None = None
    note: Note | None = None


class OverrideIn(BaseModel):
    params: Annotated[dict[str, FiniteFloat], Field(min_length=1)]
    actor: Actor | None = None  # ignored: the caller's principal is the actor
    reason: Note | None = None


class EffectiveRuleOut(BaseModel):
    id: str
    program: str
    program_version: int | None
    kind: str
    metric: str
    title: str
    severity: str
    params: dict[str, float]
    defaults: dict[str, float]
    overridden: list[str]
    override_error: str | None  # a stored override the active program refuses
    source: str
    # Confirm before paging (minutes, default_minutes, severities); None: pages at once.
    confirm: dict[str, Any] | None = None


class OverrideEventOut(BaseModel):
    id: int
    rule_id: str
    at: datetime
    actor: str
    old_params: dict[str, float] | None  # None: the defaults
    new_params: dict[str, float] | None
    reason: str | None


_DOCUMENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


@dataclass(slots=True)
class RuleBooks:
    """The active rule book, read again only when the programs' stamp moved; and who to
    tell when a program gets a new active version (the ingest pipeline's rule cache)."""

    on_change: Callable[[], None] = lambda: None
    _stamp: int = field(default=-1, init=False)
    _book: RuleBook = field(default_factory=lambda: RuleBook({}), init=False)

    async def get(self, conn: Conn) -> RuleBook:
        now = await rule_programs.stamp(conn)
        if now != self._stamp:
            self._book = await rule_programs.active_book(conn)
            self._stamp = now
        return self._book


async def rule_books(request: Request) -> RuleBooks:
    return held(request, "rule_books")  # type: ignore[no-any-return]


RuleBooksDep = Annotated[RuleBooks, Depends(rule_books)]
router = APIRouter(prefix="/api")


async def _visible(
    request: Request, who: Principal, pool: asyncpg.Pool, patient_id: str, action: str
) -> None:
    """404 for a patient this caller may not see (another team's, or none); audited."""
    async with pool.acquire() as conn:
        teams = await staff_store.patient_teams(conn, [patient_id])
    if patient_id not in teams or not who.sees(teams[patient_id]):
        audit(request, who, action, "patient-rules", resource_id=patient_id)
        raise NotFoundError("no such patient")
    audit(request, who, action, "patient-rules", [patient_id], patient_id)


@router.get("/rules/programs", response_model=list[ProgramOut])
async def list_programs(_who: CanReadRules, pool: PoolDep) -> list[dict[str, Any]]:
    """The active version of every care program, with its spec."""
    async with pool.acquire() as conn:
        return await rule_programs.active_versions(conn)


@router.get("/rules/programs/{program}", response_model=ProgramOut)
async def get_program(_who: CanReadRules, pool: PoolDep, program: ProgramName) -> dict[str, Any]:
    async with pool.acquire() as conn:
        for row in await rule_programs.active_versions(conn):
            if row["program"] == program:
                return row
    raise NotFoundError("no such program")


@router.get("/rules/programs/{program}/versions", response_model=list[VersionOut])
async def program_versions(
    _who: CanReadRules, pool: PoolDep, program: ProgramName
) -> list[dict[str, Any]]:
    """Every version of a program, newest first."""
    async with pool.acquire() as conn:
        found = await rule_programs.versions(conn, program)
    if not found:
        raise NotFoundError("no such program")
    return found


@router.put("/rules/programs/{program}", response_model=PublishedOut, openapi_extra=_DOCUMENT_BODY)
async def publish(
    principal: CanPublishRules,
    pool: PoolDep,
    books: RuleBooksDep,
    program: ProgramName,
    request: Request,
    actor: Annotated[Actor | None, Query()] = None,
    note: Annotated[Note | None, Query()] = None,
) -> PublishedOut:
    """Publish a program document (JSON, or YAML with ``Content-Type: application/yaml``)
    as the program's new active version.

    ``note`` comes from the query or, in a JSON document, from a top-level key of that
    name (not part of the program); so may ``actor``, which is ignored: the caller's
    principal is the actor.
    """
    body = await request.body()
    if len(body) > MAX_DOCUMENT_BYTES:
        raise HTTPException(413, f"a program document is at most {MAX_DOCUMENT_BYTES} bytes")
    spec, meta = _document(request.headers.get("content-type", ""), body)
    _agreed("actor", actor, meta.actor)
    who = principal.actor
    if spec.program != program:
        raise InvalidRequestError(
            f"the document is program {spec.program!r} but the path names {program!r}"
        )
    async with pool.acquire() as conn:
        before = await rule_programs.stamp(conn)
        version = await rule_programs.publish(conn, spec, who, _agreed("note", note, meta.note))
        moved = await rule_programs.stamp(conn) != before
    if moved:
        books.on_change()
    return PublishedOut(program=program, version=version, changed=moved)


@router.post("/rules/programs/{program}/activate", response_model=PublishedOut)
async def activate(
    who: CanPublishRules,
    pool: PoolDep,
    books: RuleBooksDep,
    program: ProgramName,
    body: ActivateIn,
) -> PublishedOut:
    """Make an earlier version active again (copied forward as a new version)."""
    async with pool.acquire() as conn:
        before = await rule_programs.stamp(conn)
        version = await rule_programs.activate(conn, program, body.version, who.actor, body.note)
        moved = await rule_programs.stamp(conn) != before
    if moved:
        books.on_change()
    return PublishedOut(program=program, version=version, changed=moved)


@router.get("/patients/{patient_id}/rules", response_model=list[EffectiveRuleOut])
async def patient_rules(
    request: Request,
    who: CanEditPatientRules,
    pool: PoolDep,
    books: RuleBooksDep,
    patient_id: str,
) -> list[dict[str, Any]]:
    """The patient's rules as they apply, with defaults and what is overridden."""
    await _visible(request, who, pool, patient_id, "read")
    async with pool.acquire() as conn:
        book = await books.get(conn)
        contexts = await patient_store.patient_contexts(conn, [patient_id])
    context = contexts.get(patient_id)
    if context is None:
        raise NotFoundError("no such patient")
    return rule_programs.effective_rules(book, context.programs, context.overrides)


@router.put("/patients/{patient_id}/rules/{rule_id}/params", response_model=EffectiveRuleOut)
async def set_params(
    request: Request,
    who: CanEditPatientRules,
    pool: PoolDep,
    books: RuleBooksDep,
    patient_id: str,
    rule_id: str,
    body: OverrideIn,
) -> dict[str, Any]:
    """Replace the patient's overrides of one rule (parameters not named keep defaults)."""
    await _visible(request, who, pool, patient_id, "update")
    async with pool.acquire() as conn:
        book = await books.get(conn)
        return await rule_programs.set_overrides(
            conn, patient_id, rule_id, body.params, who.actor, body.reason, book
        )


@router.delete("/patients/{patient_id}/rules/{rule_id}/params", response_model=EffectiveRuleOut)
async def revert_params(
    request: Request,
    who: CanEditPatientRules,
    pool: PoolDep,
    books: RuleBooksDep,
    patient_id: str,
    rule_id: str,
    actor: Annotated[Actor | None, Query()] = None,
    reason: Annotated[Note | None, Query()] = None,
) -> dict[str, Any]:
    """Back to the program's defaults for this rule (``actor`` is ignored)."""
    await _visible(request, who, pool, patient_id, "update")
    async with pool.acquire() as conn:
        book = await books.get(conn)
        return await rule_programs.set_overrides(
            conn, patient_id, rule_id, None, who.actor, reason, book
        )


@router.get("/patients/{patient_id}/rules/audit", response_model=list[OverrideEventOut])
async def override_audit(
    request: Request, who: CanEditPatientRules, pool: PoolDep, patient_id: str
) -> list[dict[str, Any]]:
    """Every change of the patient's rule parameters, oldest first."""
    await _visible(request, who, pool, patient_id, "read")
    async with pool.acquire() as conn:
        if not await patient_store.patient_contexts(conn, [patient_id]):
            raise NotFoundError("no such patient")
        return await rule_programs.override_history(conn, patient_id)


def _document(content_type: str, body: bytes) -> tuple[ProgramSpec, _Metadata]:
    """The program in a request body, and the actor and note it may carry as top-level keys."""
    media = content_type.split(";")[0].strip().lower()
    if media in YAML_TYPES:
        load = _yaml
    elif media in JSON_TYPES or media.endswith("+json"):
        load = _json
    else:
        raise HTTPException(415, "send the program as application/json or application/yaml")
    try:
        document = load(body)
        if not isinstance(document, dict):
            raise ValueError("a program document is a mapping with program, title and rules")
        meta = _Metadata.model_validate(
            {k: document.pop(k) for k in ("actor", "note") if k in document}
        )
        # parse_program iterates the rules before validating them
        if not isinstance(document.get("rules", []), list):
            raise ValueError("rules: must be a list")
        return parse_program(document), meta
    except ValueError as exc:  # the document's parsers and pydantic: their words, on one line
        raise InvalidRequestError(rule_programs.validation_message(exc)) from None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:  # said like YAML's, and answered 422 by _document
        raise ValueError(f"not JSON: {exc}") from None


def _yaml(body: bytes) -> Any:
    try:
        return yaml.safe_load(body)
    except yaml.YAMLError as exc:  # a ValueError like json's, answered 422 by _document
        raise ValueError(f"not YAML: {exc}") from None


def _agreed(name: str, query: str | None, body: str | None) -> str | None:
    if query is not None and body is not None and query != body:
        raise InvalidRequestError(f"{name} differs between the query and the document")
    return query if query is not None else body
