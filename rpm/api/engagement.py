"""Engagement API: segments and campaigns as versioned definitions, their members, dry runs,
the figures per segment, and contacts recorded in the interaction ledger (docs/engagement.md).

Reading (``engagement-read``: nurses and admins) is scoped to the caller's care teams: a
nurse sees the sizes and members among their own patients. Publishing and dry runs
(``engagement-manage``: admins) act on the whole population. Every listing of patients is
audited with their ids; every change is a new version naming its author.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from rpm.domain.errors import InvalidRequestError, NotFoundError
from rpm.engagement import campaigns as campaign_spec
from rpm.engagement import segments as segment_spec
from rpm.storage import campaigns as campaign_store
from rpm.storage import engagement as store
from rpm.storage import segments as segment_store
from rpm.storage import staff as staff_store

from .access import (
    CanActOnAlerts,
    CanManageEngagement,
    CanReadEngagement,
    CanReadPatientData,
    Principal,
    audit,
)
from .deps import ClockDep, PoolDep, SettingsDep

router = APIRouter(prefix="/api", tags=["engagement"])

Name = Annotated[str, Field(pattern=segment_spec.NAME.pattern)]
Note = Annotated[str, Field(max_length=500)]
MAX_MEMBERS = 500


class Published(BaseModel):
    name: str
    version: int
    changed: bool


class FactOut(BaseModel):
    name: str
    type: str
    doc: str


@router.get("/segments/facts", response_model=list[FactOut])
async def segment_facts(_who: CanReadEngagement) -> list[FactOut]:
    """The facts a segment definition may test, with their types."""
    return [FactOut(name=n, type=f.type, doc=f.doc) for n, f in segment_spec.FACTS.items()]


@router.get("/segments")
async def list_segments(
    who: CanReadEngagement, pool: PoolDep, clock: ClockDep
) -> list[dict[str, Any]]:
    """Every segment in use (its newest version) with its size now, among the caller's
    patients."""
    async with pool.acquire() as conn:
        current = await segment_store.current_segments(conn)
        sizes = await segment_store.segment_sizes(conn, clock(), current, who.teams)
    return [
        {
            "name": s.name,
            "version": s.version,
            "description": s.spec.description,
            "definition": s.spec.document(),
            "explained": segment_spec.explain(s.spec.where),
            "size": sizes[s.name],
            "actor": s.actor,
            "created_at": s.created_at,
        }
        for s in current
    ]


@router.get("/segments/{name}")
async def get_segment(
    who: CanReadEngagement,
    pool: PoolDep,
    clock: ClockDep,
    request: Request,
    name: Name,
    limit: Annotated[int, Query(ge=1, le=MAX_MEMBERS)] = 100,
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """A segment with its size and a page of its members (by patient id, with the facts
    that put them there); page on with ``after``."""
    async with pool.acquire() as conn:
        found = await segment_store.segment(conn, name)
        if found is None:
            raise NotFoundError("no such segment")
        now = clock()
        sizes = await segment_store.segment_sizes(conn, now, [found], who.teams)
        members = await segment_store.segment_members(
            conn, now, found.spec, who.teams, limit=limit, after=after
        )
    audit(request, who, "read", "segment-members", [m["patient_id"] for m in members], name)
    return {
        "name": found.name,
        "version": found.version,
        "description": found.spec.description,
        "definition": found.spec.document(),
        "explained": segment_spec.explain(found.spec.where),
        "size": sizes[name],
        "members": members,
        "next_after": members[-1]["patient_id"] if len(members) == limit else None,
    }


@router.get("/segments/{name}/versions")
async def segment_versions(
    _who: CanReadEngagement, pool: PoolDep, name: Name
) -> list[dict[str, Any]]:
    """Every version of a segment, newest first: who changed it, when and why."""
    async with pool.acquire() as conn:
        found = await segment_store.segment_history(conn, name)
    if not found:
        raise NotFoundError("no such segment")
    return found


@router.put("/segments/{name}", response_model=Published)
async def publish_segment(
    who: CanManageEngagement,
    pool: PoolDep,
    name: Name,
    document: Annotated[dict[str, Any], Body()],
    note: Annotated[Note | None, Query()] = None,
) -> Published:
    """Publish a definition (``{"description", "where"}``) as the segment's newest version;
    the same definition again changes nothing."""
    spec = segment_spec.parse(document)
    async with pool.acquire() as conn:
        version, changed = await segment_store.publish_segment(conn, name, spec, who.actor, note)
    return Published(name=name, version=version, changed=changed)


@router.delete("/segments/{name}", response_model=Published)
async def retire_segment(
    who: CanManageEngagement,
    pool: PoolDep,
    name: Name,
    note: Annotated[Note | None, Query()] = None,
) -> Published:
    """Retire a segment (a version saying so; the history stays). Campaigns aimed at it stop
    planning and say why."""
    async with pool.acquire() as conn:
        version = await segment_store.retire_segment(conn, name, who.actor, note)
    if version is None:
        raise NotFoundError("no such segment")
    return Published(name=name, version=version, changed=True)


# --- campaigns ---------------------------------------------------------------------------


def _campaign_out(c: campaign_store.CampaignVersion) -> dict[str, Any]:
    return {
        "name": c.name,
        "version": c.version,
        "live": c.live,
        "definition": c.spec.document(),
        "trigger_explained": c.spec.trigger.explain(),
        "actor": c.actor,
        "created_at": c.created_at,
        "note": c.note,
    }


@router.get("/campaigns")
async def list_campaigns(_who: CanReadEngagement, pool: PoolDep) -> list[dict[str, Any]]:
    """Every campaign's newest version, live or paused."""
    async with pool.acquire() as conn:
        return [_campaign_out(c) for c in await campaign_store.current_campaigns(conn)]


@router.get("/campaigns/{name}/versions")
async def campaign_versions(
    _who: CanReadEngagement, pool: PoolDep, name: Name
) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        found = await campaign_store.campaign_history(conn, name)
    if not found:
        raise NotFoundError("no such campaign")
    return found


@router.put("/campaigns/{name}", response_model=Published)
async def publish_campaign(
    who: CanManageEngagement,
    pool: PoolDep,
    name: Name,
    document: Annotated[dict[str, Any], Body()],
    live: Annotated[bool, Query()] = False,
    note: Annotated[Note | None, Query()] = None,
) -> Published:
    """Publish a campaign definition as its newest version, live (the planner sends it) or
    paused (the default: dry-run it first)."""
    spec = campaign_spec.parse(document)
    async with pool.acquire() as conn:
        version, changed = await campaign_store.publish_campaign(
            conn, name, spec, live, who.actor, note
        )
    return Published(name=name, version=version, changed=changed)


@router.post("/campaigns/{name}/dry-run")
async def dry_run(
    who: CanManageEngagement,
    pool: PoolDep,
    clock: ClockDep,
    settings: SettingsDep,
    request: Request,
    name: Name,
    limit: Annotated[int, Query(ge=1, le=MAX_MEMBERS)] = 100,
) -> dict[str, Any]:
    """Who the campaign's newest version would message now, with the message each would get,
    and how many the gate leaves out and why. Sends nothing."""
    async with pool.acquire() as conn:
        found = await campaign_store.campaign(conn, name)
        if found is None:
            raise NotFoundError("no such campaign")
        segment = await segment_store.segment(conn, found.spec.segment)
        if segment is None:
            raise InvalidRequestError(f"segment {found.spec.segment} does not exist")
        rows, counts = await campaign_store.dry_run(
            conn, found, segment.spec, clock(), settings.sms.daily_cap, limit
        )
    audit(request, who, "dry-run", "campaign", [r["patient_id"] for r in rows], name)
    return {
        "name": name,
        "version": found.version,
        "live": found.live,
        "why": f"{segment_spec.explain(segment.spec.where)}; {found.spec.trigger.explain()}",
        "counts": counts,
        "patients": [
            {
                "patient_id": r["patient_id"],
                "occurrence": r["occurrence"],
                "excluded": r["excluded"],
                "language": r["language"],
                "message": campaign_spec.render(
                    found.spec.message_for(r["language"]), r["context"] or {}
                ),
            }
            for r in rows
        ],
    }


# --- figures and the ledger --------------------------------------------------------------


@router.get("/engagement")
async def engagement(
    who: CanReadEngagement,
    pool: PoolDep,
    clock: ClockDep,
    days: Annotated[int, Query(ge=7, le=365)] = 28,
) -> list[dict[str, Any]]:
    """Per segment (``*``: every patient the caller sees), over the last ``days`` days:
    interactions per patient-year (goal 50-100), reply rate, days with readings per patient
    in each of the last four weeks."""
    async with pool.acquire() as conn:
        current = await segment_store.current_segments(conn)
        return await store.engagement(conn, clock(), current, who.teams, days)


@router.get("/patients/{patient_id}/interactions")
async def patient_interactions(
    who: CanReadPatientData,
    pool: PoolDep,
    clock: ClockDep,
    request: Request,
    patient_id: Annotated[str, Field(max_length=200)],
    days: Annotated[int, Query(ge=1, le=366)] = 28,
) -> dict[str, Any]:
    """A patient's touches over the last ``days`` days (days with readings, messages, replies,
    calls, contacts), oldest first, and their rate per patient-year."""
    now = clock()
    since = now - timedelta(days=days)
    async with pool.acquire() as conn:
        await _visible(request, who, conn, patient_id, "read")
        touches = await store.patient_ledger(conn, patient_id, since, now)
    return {
        "patient_id": patient_id,
        "days": days,
        "interactions": len(touches),
        "interactions_per_patient_year": round(len(touches) * 365.25 / days, 1),
        "touches": touches,
    }


class ContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["phone", "video", "in_person", "sms", "portal"]
    direction: Literal["outbound", "inbound"] = "outbound"
    at: datetime | None = None
    ref: str | None = Field(None, max_length=200, description="your id for it: idempotent")


@router.post("/patients/{patient_id}/interactions", status_code=201)
async def record_contact(
    who: CanActOnAlerts,
    pool: PoolDep,
    clock: ClockDep,
    request: Request,
    patient_id: Annotated[str, Field(max_length=200)],
    body: ContactIn,
) -> dict[str, Any]:
    """Record a care team's contact with a patient in the interaction ledger (a call, a
    video visit). With ``ref``, recording it again records it once."""
    at = body.at or clock()
    if at.tzinfo is None:
        raise InvalidRequestError("at needs a time zone")
    async with pool.acquire() as conn:
        await _visible(request, who, conn, patient_id, "create")
        ref = body.ref or f"{who.actor}:{at.isoformat()}"
        await store.record(
            conn,
            [store.Interaction(patient_id, at, "nurse", body.channel, body.direction, ref)],
        )
    return {"patient_id": patient_id, "kind": "nurse", "channel": body.channel, "ref": ref}


async def _visible(
    request: Request, who: Principal, conn: Any, patient_id: str, action: str
) -> None:
    """404 (audited) for a patient outside the caller's teams; the access audited."""
    teams = await staff_store.patient_teams(conn, [patient_id])
    if patient_id not in teams or not who.sees(teams[patient_id]):
        audit(request, who, action, "interaction", resource_id=patient_id)
        raise NotFoundError("no such patient")
    audit(request, who, action, "interaction", [patient_id], patient_id)
