"""Access administration: staff bearer tokens, API keys, care teams, the audit log.

``POST /api/auth/token`` is the one ``/api`` route without a principal: it is how a
program gets one (name and password, rate-limited like the dashboard's sign-in).
Everything else here is for admins only. Refusals are errors of the tree, answered by
rpm/api/errors.py (a wrong password 401, too many 429 with Retry-After, a taken key id 409).
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from rpm.auth import API_KEY_PREFIX, STAFF_ID, token_hash
from rpm.domain.errors import InvalidRequestError, NotFoundError
from rpm.storage import audit as audit_store
from rpm.storage import registry, staff_auth
from rpm.storage import staff as staff_store

from .access import KEY_SCOPES, IsAccessAdmin, audit
from .deps import AuthDep, PoolDep
from .registry import PATIENT_ID

KEY_ID = r"^[a-z0-9][a-z0-9-]{0,39}$"
TEAM_ID = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class TokenIn(BaseModel):
    username: Annotated[str, Field(max_length=200)]
    password: Annotated[str, Field(max_length=2000)]


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth 2.0 token type
    expires_in: int  # seconds
    expires_at: datetime


class ApiKeyIn(BaseModel):
    id: Annotated[str, Field(pattern=KEY_ID)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    scopes: Annotated[list[Literal["fhir:read", "ingest"]], Field(min_length=1)]
    integration: str | None = None  # required with the ingest scope: whose webhooks it posts


class ApiKeyOut(BaseModel):
    id: str
    name: str
    scopes: list[str]
    integration: str | None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str  # shown once


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    resource: str
    resource_id: str | None
    route: str
    patient_ids: list[str]
    client_addr: str | None
    user_agent: str | None
    status: int


ServiceName = Annotated[str, Field(min_length=1, max_length=40, pattern=r"\S")]


class TeamIn(BaseModel):
    id: Annotated[str, Field(pattern=TEAM_ID)]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    # What patient texts and calls say they are from (None: RPM_SMS_SERVICE_NAME)
    service_name: ServiceName | None = None


class TeamOut(BaseModel):
    id: str
    title: str
    service_name: str | None = None
    members: list[str]


class ServiceNameIn(BaseModel):
    service_name: ServiceName | None  # None: back to RPM_SMS_SERVICE_NAME


class CareTeamIn(BaseModel):
    team: Annotated[str | None, Field(pattern=TEAM_ID)]  # None: no team (admins only see it)


def _key_out(k: staff_auth.ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "scopes": list(k.scopes),
        "integration": k.integration,
        "created_by": k.created_by,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
    }


async def create_api_key(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    *,
    key_id: str,
    name: str,
    scopes: list[str],
    integration: str | None,
    created_by: str,
) -> tuple[str, staff_auth.ApiKeyRecord]:
    """A new key (the secret, shown once) and its record. ``InvalidRequestError`` for bad
    input, ``ApiKeyExists`` for a taken id."""
    if not re.fullmatch(KEY_ID, key_id):
        raise InvalidRequestError(
            "key id: lowercase letters, digits and '-', at most 40 characters"
        )
    unknown = sorted(set(scopes) - set(KEY_SCOPES))
    if unknown or not scopes:
        raise InvalidRequestError(f"scopes must be some of {list(KEY_SCOPES)}")
    if "ingest" in scopes:
        if integration is None:
            raise InvalidRequestError("an ingest key acts for an integration: name it")
        if await registry.integration(conn, integration) is None:
            raise InvalidRequestError(f"no integration {integration!r}")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    await staff_auth.create_api_key(
        conn,
        key_id=key_id,
        name=name,
        scopes=tuple(sorted(set(scopes))),
        integration=integration if "ingest" in scopes else None,
        key_hash=token_hash(key),
        created_by=created_by,
    )
    found = await staff_auth.api_key(conn, token_hash(key))
    assert found is not None
    return key, found


router = APIRouter(prefix="/api", tags=["access"])


@router.post(
    "/auth/token",
    response_model=TokenOut,
    responses={
        401: {"description": "wrong name or password"},
        429: {"description": "too many failures"},
    },
)
async def token(request: Request, auth: AuthDep, body: TokenIn) -> TokenOut:
    """A short-lived bearer token for a staff member (``Authorization: Bearer ...``)."""
    client = request.client.host if request.client else "unknown"
    value, expires = await auth.issue_token(body.username, body.password, client)
    remaining = int((expires - datetime.now(UTC)).total_seconds())
    return TokenOut(access_token=value, expires_in=remaining, expires_at=expires)


@router.get("/audit", response_model=list[AuditOut])
async def audit_log(
    _who: IsAccessAdmin,
    pool: PoolDep,
    patient: Annotated[str | None, Query(pattern=PATIENT_ID)] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=32)] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    before_id: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Audit rows, newest first; the next page: ``before_id`` = the last row's id."""
    async with pool.acquire() as conn:
        return await audit_store.query(
            conn,
            patient_id=patient,
            actor=actor,
            action=action,
            since=since,
            until=until,
            before_id=before_id,
            limit=limit,
        )


@router.post("/keys", status_code=201, response_model=ApiKeyCreated)
async def create_key(who: IsAccessAdmin, pool: PoolDep, body: ApiKeyIn) -> dict[str, Any]:
    """A new API key: the ``key`` is shown in this answer only."""
    async with pool.acquire() as conn:
        key, record = await create_api_key(
            conn,
            key_id=body.id,
            name=body.name,
            scopes=list(body.scopes),
            integration=body.integration,
            created_by=who.actor,
        )
    return {**_key_out(record), "key": key}


@router.get("/keys", response_model=list[ApiKeyOut])
async def list_keys(_who: IsAccessAdmin, pool: PoolDep) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return [_key_out(k) for k in await staff_auth.api_keys(conn)]


@router.post("/keys/{key_id}/revoke")
async def revoke_key(_who: IsAccessAdmin, pool: PoolDep, key_id: str) -> dict[str, str]:
    """Refuse the key from now on."""
    async with pool.acquire() as conn:
        if not await staff_auth.revoke_api_key(conn, key_id):
            raise NotFoundError("no such key")
    return {"id": key_id, "state": "revoked"}


@router.get("/teams", response_model=list[TeamOut])
async def list_teams(_who: IsAccessAdmin, pool: PoolDep) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return await staff_store.teams(conn)


@router.post("/teams", status_code=201)
async def create_team(_who: IsAccessAdmin, pool: PoolDep, body: TeamIn) -> dict[str, str]:
    async with pool.acquire() as conn:
        await staff_store.create_team(conn, body.id, body.title, body.service_name)
    return {"id": body.id}


@router.put("/teams/{team_id}/service-name")
async def set_service_name(
    _who: IsAccessAdmin, pool: PoolDep, team_id: str, body: ServiceNameIn
) -> dict[str, str | None]:
    """The name the team's patient texts and calls are from."""
    async with pool.acquire() as conn:
        if not await staff_store.set_service_name(conn, team_id, body.service_name):
            raise NotFoundError("no such team")
    return {"team": team_id, "service_name": body.service_name}


@router.put("/teams/{team_id}/members/{staff_id}")
async def add_member(
    _who: IsAccessAdmin, pool: PoolDep, team_id: str, staff_id: str
) -> dict[str, str]:
    if not re.fullmatch(STAFF_ID, staff_id):
        raise NotFoundError("no such staff member")
    async with pool.acquire() as conn:
        await staff_store.add_member(conn, team_id, staff_id)
    return {"team": team_id, "staff_id": staff_id}


@router.delete("/teams/{team_id}/members/{staff_id}")
async def remove_member(
    _who: IsAccessAdmin, pool: PoolDep, team_id: str, staff_id: str
) -> dict[str, str]:
    async with pool.acquire() as conn:
        if not await staff_store.remove_member(conn, team_id, staff_id):
            raise NotFoundError("not a member")
    return {"team": team_id, "staff_id": staff_id}


@router.put("/patients/{patient_id}/care-team")
async def set_care_team(
    request: Request, who: IsAccessAdmin, pool: PoolDep, patient_id: str, body: CareTeamIn
) -> dict[str, str | None]:
    """Which care team's nurses see this patient."""
    audit(request, who, "update", "care-team", [patient_id], patient_id)
    async with pool.acquire() as conn:
        if patient_id not in await staff_store.patient_teams(conn, [patient_id]):
            raise NotFoundError("no such patient")
        await staff_store.set_patient_team(conn, patient_id, body.team)
    return {"patient_id": patient_id, "care_team": body.team}
