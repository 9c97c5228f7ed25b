"""Who may call what: principals, the role x permission table, team scoping, the audit hook.

A request to ``/api/*`` or ``/fhir/*`` names its principal in one of three ways:

- a staff **session cookie** (the dashboard's; state changes must echo its CSRF token),
- a staff **bearer token** (``rpmt_...``, from ``POST /api/auth/token``),
- an integration **API key** (``rpmk_...``, scoped ``fhir:read`` and/or ``ingest``).

``require(permission)`` is the dependency every route uses: 401 without a valid principal,
403 when its role (or the key's scopes) lacks the permission. ``GRANTS`` below is the one
source of truth for the README's matrix. Nurses are scoped to the patients of their care
teams: ``Principal.sees`` answers per patient, and another team's patient is answered 404
by the routes (not 403), so a nurse cannot learn that it exists.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from rpm.auth import API_KEY_PREFIX, CSRF_HEADER, STAFF_TOKEN_PREFIX, Auth, token_hash
from rpm.domain.errors import StorageError
from rpm.storage import staff_auth
from rpm.storage.audit import AuditEntry
from rpm.storage.pool import DATABASE_UNAVAILABLE

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
AUDIT_SCOPE_KEY = "rpm.audit"  # where a request's audit notes wait for the middleware


class Permission(StrEnum):
    PATIENT_DATA = "patient-data"  # alert queue and stream, one alert, readings (team-scoped)
    ALERT_ACTIONS = "alert-actions"  # acknowledge, resolve, assign, snooze (team-scoped)
    PATIENT_RULES = "patient-rules"  # a patient's effective rules and overrides (team-scoped)
    RULES_READ = "rules-read"  # care programs and their versions
    RULES_PUBLISH = "rules-publish"  # publish and activate program versions
    ENROLMENT = "enrolment"  # patients, devices, bindings, integrations, quarantine
    FHIR_READ = "fhir-read"  # GET /fhir/* (staff: team-scoped; fhir:read keys: all)
    FHIR_PUSH = "fhir-push"  # the EHR push's failures and requeue
    ACCESS_ADMIN = "access-admin"  # staff, care teams, API keys, the audit log
    ENGAGEMENT_READ = "engagement-read"  # segments, campaigns, engagement figures (team-scoped)
    ENGAGEMENT_MANAGE = "engagement-manage"  # publish segments and campaigns, dry runs
    TIME_TRACKING = "time-tracking"  # time entries and one's own timer (team-scoped)
    BILLING_READ = "billing-read"  # month-end billing report, code tables (team-scoped)
    BILLING_MANAGE = "billing-manage"  # publish billing code tables
    ON_CALL_READ = "on-call-read"  # a care team's on-call rota (team-scoped)
    ON_CALL_MANAGE = "on-call-manage"  # add and remove on-call shifts
    READING_CORRECTIONS = "reading-corrections"  # mark a reading entered-in-error (team-scoped)


_NURSE = frozenset(
    {
        Permission.PATIENT_DATA,
        Permission.ALERT_ACTIONS,
        Permission.PATIENT_RULES,
        Permission.RULES_READ,
        Permission.FHIR_READ,
        Permission.ENGAGEMENT_READ,
        Permission.TIME_TRACKING,
        Permission.BILLING_READ,
        Permission.ON_CALL_READ,
        Permission.READING_CORRECTIONS,
    }
)
# Role (staff) or scope (API key) -> what it may do. Ingest keys act at /ingest/* only,
# where the webhook route checks them itself.
GRANTS: Mapping[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "nurse": _NURSE,
    "scope:fhir:read": frozenset({Permission.FHIR_READ}),
    "scope:ingest": frozenset(),
}
KEY_SCOPES = ("fhir:read", "ingest")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a staff member (session or token) or an API key."""

    kind: str  # "staff" or "key"
    id: str
    role: str  # admin, nurse, integration
    via: str  # session, token, key
    teams: frozenset[str] | None  # care teams whose patients it sees; None: every patient
    permissions: frozenset[Permission]
    csrf_token: str | None = None  # sessions only
    integration: str | None = None  # keys only

    @property
    def actor(self) -> str:
        """How audit rows and alert events name this caller."""
        return f"{self.kind}:{self.id}"

    def sees(self, care_team: str | None) -> bool:
        """Whether a patient of ``care_team`` is visible to this caller."""
        return self.teams is None or (care_team is not None and care_team in self.teams)


def staff_principal(
    staff_id: str, role: str, teams: Iterable[str], via: str, csrf: str | None = None
) -> Principal:
    return Principal(
        kind="staff",
        id=staff_id,
        role=role,
        via=via,
        teams=None if role == "admin" else frozenset(teams),
        permissions=GRANTS.get(role, frozenset()),
        csrf_token=csrf,
    )


def key_principal(key: staff_auth.ApiKeyRecord) -> Principal:
    permissions = frozenset().union(*(GRANTS.get(f"scope:{s}", frozenset()) for s in key.scopes))
    return Principal(
        kind="key",
        id=key.id,
        role="integration",
        via="key",
        teams=None,  # an EHR reads every patient's record
        permissions=permissions,
        integration=key.integration,
    )


async def bearer_principal(auth: Auth, credential: str) -> Principal | None:
    """The principal of a bearer credential, or None when it is unknown, expired or revoked."""
    if len(credential) > 200:
        return None
    digest = token_hash(credential)
    async with auth.pool.acquire() as conn:
        if credential.startswith(STAFF_TOKEN_PREFIX):
            found = await staff_auth.token(conn, digest)
            return (
                staff_principal(found.staff_id, found.role, found.teams, "token") if found else None
            )
        if credential.startswith(API_KEY_PREFIX):
            key = await staff_auth.api_key(conn, digest)
            return key_principal(key) if key else None
    return None


# Documented in the OpenAPI schema; the dependency reads the request itself, because the
# cookie's name depends on RPM_SESSION_COOKIE_SECURE (``__Host-rpm_session`` when set).
_bearer = HTTPBearer(
    auto_error=False,
    description="A staff access token (rpmt_..., POST /api/auth/token) or an API key (rpmk_...)",
)
_cookie = APIKeyCookie(
    name="rpm_session",
    auto_error=False,
    description="The dashboard's session (state changes also need the X-CSRF-Token header)",
)


async def principal_of(request: Request) -> Principal:
    """The request's principal, or 401 (``StorageError``, 503, while the database is away)."""
    try:
        return await _principal_of(request)
    except DATABASE_UNAVAILABLE as exc:  # asyncpg's words for it, as ours
        raise StorageError("storage unavailable; retry") from exc


async def _principal_of(request: Request) -> Principal:
    auth: Auth = request.app.state.auth
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, credential = header.partition(" ")
        found = None
        if scheme.lower() == "bearer" and credential.strip():
            found = await bearer_principal(auth, credential.strip())
        if found is None:
            raise HTTPException(
                401, "invalid, expired or revoked credential", {"WWW-Authenticate": "Bearer"}
            )
        return found
    signed_in = await auth.session_for(request)
    if signed_in is None:
        raise HTTPException(
            401, "sign in or send a bearer credential", {"WWW-Authenticate": "Bearer"}
        )
    return staff_principal(
        signed_in.staff_id, signed_in.role, signed_in.teams, "session", signed_in.csrf_token
    )


def require(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """Dependency: the principal, when it holds ``permission`` (401 / 403 otherwise).

    A session (cookie) changing state must send its CSRF token in ``X-CSRF-Token``.
    """

    async def dependency(
        request: Request,
        _bearer_doc: HTTPAuthorizationCredentials | None = Security(_bearer),  # noqa: B008
        _cookie_doc: str | None = Security(_cookie),
    ) -> Principal:
        who = await principal_of(request)
        if permission not in who.permissions:
            raise HTTPException(403, "not allowed for this role")
        if who.via == "session" and request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), (who.csrf_token or "").encode()):
                raise HTTPException(403, "missing or wrong CSRF token")
        notes = request.scope.get(AUDIT_SCOPE_KEY)
        if isinstance(notes, dict):
            notes["principal"] = who
        return who

    dependency.__name__ = f"require_{permission.name.lower()}"
    return dependency


def audit(
    request: Request,
    who: Principal,
    action: str,
    resource: str,
    patients: Iterable[str] = (),
    resource_id: str | None = None,
) -> None:
    """Note an access to patient data; the audit middleware writes it with the answer's
    status before the answer leaves (so a row exists for every answer given)."""
    notes = request.scope.get(AUDIT_SCOPE_KEY)
    if not isinstance(notes, dict):
        return  # not under the middleware (a router mounted alone in a unit test)
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    client = request.client.host if request.client else None
    entries: list[dict[str, Any]] = notes.setdefault("entries", [])
    entries.append(
        {
            "actor": who.actor,
            "role": who.role,
            "action": action,
            "resource": resource,
            "resource_id": resource_id,
            "route": f"{request.method} {template}",
            "patient_ids": tuple(dict.fromkeys(patients)),
            "client_addr": client,
            "user_agent": (request.headers.get("user-agent") or "")[:300] or None,
        }
    )


def entries_with_status(notes: Mapping[str, Any], status: int) -> list[AuditEntry]:
    return [AuditEntry(**e, status=status) for e in notes.get("entries", [])]


# One dependency per permission (FastAPI runs a dependency once per request), and the
# parameter types routes declare: ``who: CanReadPatientData``. Module-level, because
# annotations are resolved in the module's namespace.
REQUIRE: Mapping[Permission, Callable[..., Awaitable[Principal]]] = {
    p: require(p) for p in Permission
}
CanReadPatientData = Annotated[Principal, Security(REQUIRE[Permission.PATIENT_DATA])]
CanActOnAlerts = Annotated[Principal, Security(REQUIRE[Permission.ALERT_ACTIONS])]
CanEditPatientRules = Annotated[Principal, Security(REQUIRE[Permission.PATIENT_RULES])]
CanReadRules = Annotated[Principal, Security(REQUIRE[Permission.RULES_READ])]
CanPublishRules = Annotated[Principal, Security(REQUIRE[Permission.RULES_PUBLISH])]
CanEnrol = Annotated[Principal, Security(REQUIRE[Permission.ENROLMENT])]
CanReadFhir = Annotated[Principal, Security(REQUIRE[Permission.FHIR_READ])]
CanManageFhirPush = Annotated[Principal, Security(REQUIRE[Permission.FHIR_PUSH])]
IsAccessAdmin = Annotated[Principal, Security(REQUIRE[Permission.ACCESS_ADMIN])]
CanReadEngagement = Annotated[Principal, Security(REQUIRE[Permission.ENGAGEMENT_READ])]
CanManageEngagement = Annotated[Principal, Security(REQUIRE[Permission.ENGAGEMENT_MANAGE])]
CanTrackTime = Annotated[Principal, Security(REQUIRE[Permission.TIME_TRACKING])]
CanReadBilling = Annotated[Principal, Security(REQUIRE[Permission.BILLING_READ])]
CanManageBilling = Annotated[Principal, Security(REQUIRE[Permission.BILLING_MANAGE])]
CanReadOnCall = Annotated[Principal, Security(REQUIRE[Permission.ON_CALL_READ])]
CanManageOnCall = Annotated[Principal, Security(REQUIRE[Permission.ON_CALL_MANAGE])]
CanCorrectReadings = Annotated[Principal, Security(REQUIRE[Permission.READING_CORRECTIONS])]
