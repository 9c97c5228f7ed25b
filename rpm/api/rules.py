"""Rules API: care programs as versioned specs, and audited per-patient parameter overrides."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import yaml
from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field, FiniteFloat

from rpm.domain.errors import RuleNotFound, StoredProgramInvalid
from rpm.storage import registry as patient_store
from rpm.storage import rule_programs
from rpm.storage import staff as staff_store
from rpm.storage.pool import Conn
from rules.programs import RuleBook
from rules.spec import ProgramSpec, parse_program

from .access import CanEditPatientRules, CanPublishRules, CanReadRules, Principal, audit
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


class _Books:
    """The active rule book, read again only when the programs' stamp moved."""

    def __init__(self) -> None:
        self._stamp = -1
        self._book = RuleBook({})

    async def get(self, conn: Conn) -> RuleBook:
        now = await rule_programs.stamp(conn)
        if now != self._stamp:
            self._book = await rule_programs.active_book(conn)
            self._stamp = now
        return self._book


def router(pool: asyncpg.Pool, on_change: Callable[[], None] | None = None) -> APIRouter:
    """The rules endpoints; ``on_change`` is called after a program gets a new active version."""
    api = APIRouter(prefix="/api")
    books = _Books()

    async def visible(request: Request, who: Principal, patient_id: str, action: str) -> None:
        """404 for a patient this caller may not see (another team's, or none); audited."""
        async with pool.acquire() as conn:
            teams = await staff_store.patient_teams(conn, [patient_id])
        if patient_id not in teams or not who.sees(teams[patient_id]):
            audit(request, who, action, "patient-rules", resource_id=patient_id)
            raise HTTPException(404, "no such patient")
        audit(request, who, action, "patient-rules", [patient_id], patient_id)

    def changed() -> None:
        if on_change is not None:
            on_change()

    @api.get("/rules/programs", response_model=list[ProgramOut])
    async def list_programs(_who: CanReadRules) -> list[dict[str, Any]]:
        """The active version of every care program, with its spec."""
        async with pool.acquire() as conn:
            return await rule_programs.active_versions(conn)

    @api.get("/rules/programs/{program}", response_model=ProgramOut)
    async def get_program(_who: CanReadRules, program: ProgramName) -> dict[str, Any]:
        async with pool.acquire() as conn:
            for row in await rule_programs.active_versions(conn):
                if row["program"] == program:
                    return row
        raise HTTPException(404, "no such program")

    @api.get("/rules/programs/{program}/versions", response_model=list[VersionOut])
    async def program_versions(_who: CanReadRules, program: ProgramName) -> list[dict[str, Any]]:
        """Every version of a program, newest first."""
        async with pool.acquire() as conn:
            found = await rule_programs.versions(conn, program)
        if not found:
            raise HTTPException(404, "no such program")
        return found

    @api.put("/rules/programs/{program}", response_model=PublishedOut, openapi_extra=_DOCUMENT_BODY)
    async def publish(
        principal: CanPublishRules,
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
            raise HTTPException(
                422, f"the document is program {spec.program!r} but the path names {program!r}"
            )
        async with pool.acquire() as conn:
            before = await rule_programs.stamp(conn)
            version = await rule_programs.publish(conn, spec, who, _agreed("note", note, meta.note))
            moved = await rule_programs.stamp(conn) != before
        if moved:
            changed()
        return PublishedOut(program=program, version=version, changed=moved)

    @api.post("/rules/programs/{program}/activate", response_model=PublishedOut)
    async def activate(
        who: CanPublishRules, program: ProgramName, body: ActivateIn
    ) -> PublishedOut:
        """Make an earlier version active again (copied forward as a new version)."""
        async with pool.acquire() as conn:
            before = await rule_programs.stamp(conn)
            try:
                version = await rule_programs.activate(
                    conn, program, body.version, who.actor, body.note
                )
            except RuleNotFound as exc:
                raise HTTPException(404, str(exc)) from None
            except StoredProgramInvalid as exc:
                raise HTTPException(422, str(exc)) from None
            moved = await rule_programs.stamp(conn) != before
        if moved:
            changed()
        return PublishedOut(program=program, version=version, changed=moved)

    @api.get("/patients/{patient_id}/rules", response_model=list[EffectiveRuleOut])
    async def patient_rules(
        request: Request, who: CanEditPatientRules, patient_id: str
    ) -> list[dict[str, Any]]:
        """The patient's rules as they apply, with defaults and what is overridden."""
        await visible(request, who, patient_id, "read")
        async with pool.acquire() as conn:
            book = await books.get(conn)
            contexts = await patient_store.patient_contexts(conn, [patient_id])
        context = contexts.get(patient_id)
        if context is None:
            raise HTTPException(404, "no such patient")
        return rule_programs.effective_rules(book, context.programs, context.overrides)

    @api.put("/patients/{patient_id}/rules/{rule_id}/params", response_model=EffectiveRuleOut)
    async def set_params(
        request: Request, who: CanEditPatientRules, patient_id: str, rule_id: str, body: OverrideIn
    ) -> dict[str, Any]:
        """Replace the patient's overrides of one rule (parameters not named keep defaults)."""
        await visible(request, who, patient_id, "update")
        return await _set(patient_id, rule_id, body.params, who.actor, body.reason)

    @api.delete("/patients/{patient_id}/rules/{rule_id}/params", response_model=EffectiveRuleOut)
    async def revert_params(
        request: Request,
        who: CanEditPatientRules,
        patient_id: str,
        rule_id: str,
        actor: Annotated[Actor | None, Query()] = None,
        reason: Annotated[Note | None, Query()] = None,
    ) -> dict[str, Any]:
        """Back to the program's defaults for this rule (``actor`` is ignored)."""
        await visible(request, who, patient_id, "update")
        return await _set(patient_id, rule_id, None, who.actor, reason)

    @api.get("/patients/{patient_id}/rules/audit", response_model=list[OverrideEventOut])
    async def override_audit(
        request: Request, who: CanEditPatientRules, patient_id: str
    ) -> list[dict[str, Any]]:
        """Every change of the patient's rule parameters, oldest first."""
        await visible(request, who, patient_id, "read")
        async with pool.acquire() as conn:
            if not await patient_store.patient_contexts(conn, [patient_id]):
                raise HTTPException(404, "no such patient")
            return await rule_programs.override_history(conn, patient_id)

    async def _set(
        patient_id: str,
        rule_id: str,
        params: dict[str, float] | None,
        actor: str,
        reason: str | None,
    ) -> dict[str, Any]:
        async with pool.acquire() as conn:
            book = await books.get(conn)
            try:
                return await rule_programs.set_overrides(
                    conn, patient_id, rule_id, params, actor, reason, book
                )
            except RuleNotFound as exc:
                raise HTTPException(404, str(exc)) from None
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None

    return api


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
    except ValueError as exc:
        raise HTTPException(422, rule_programs.validation_message(exc)) from None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None


def _yaml(body: bytes) -> Any:
    try:
        return yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None


def _agreed(name: str, query: str | None, body: str | None) -> str | None:
    if query is not None and body is not None and query != body:
        raise HTTPException(422, f"{name} differs between the query and the document")
    return query if query is not None else body
