"""Staff sign-in: argon2id passwords, cookie sessions, CSRF tokens, failed-sign-in limits.

- **Passwords** are hashed with argon2id (argon2-cffi's ``PasswordHasher``, whose defaults
  are RFC 9106's second recommended profile: 64 MiB, 3 passes, 4 lanes). Verifying costs
  tens of milliseconds of CPU, so it runs in a worker thread, never on the event loop; an
  unknown name is verified against a dummy hash so both answers take as long.
- **Sessions**: a 256-bit random token travels in an ``HttpOnly``, ``SameSite=Strict``
  cookie (``Secure`` and ``__Host-``-prefixed when ``RPM_SESSION_COOKIE_SECURE`` is set);
  the database keeps only its SHA-256, so a leaked table signs nobody in. Sessions expire
  ``RPM_SESSION_TTL_HOURS`` after sign-in, whatever the activity.
- **CSRF**: each session has its own random token. The page carries it, and every state
  change must send it back (header ``X-CSRF-Token``, or a ``csrf_token`` form field from
  a plain form): a request that only carries the cookie is refused with 403. The sign-in
  form itself uses a double-submit cookie (no session exists yet).
- **Bearer tokens** (``POST /api/auth/token``) are for programs acting for a staff
  member: ``rpmt_`` + 256 random bits, valid ``RPM_ACCESS_TOKEN_TTL_MIN`` minutes, stored
  as SHA-256 like sessions. They need no CSRF token: a browser never sends them by itself.
- **Failed sign-ins** are limited per (sign-in name, client address): after
  ``RPM_SIGNIN_MAX_FAILURES`` failures within ``RPM_SIGNIN_FAILURE_WINDOW_S`` further
  attempts get 429 until the oldest failure leaves the window. The counts are kept in
  memory, per process (bounded; a restart forgets them): with several API processes an
  attacker gets that many times the attempts, still slowed down by argon2's cost.
  Behind a reverse proxy the client address is the proxy's unless uvicorn is told to
  trust its ``X-Forwarded-For`` (``--forwarded-allow-ips``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import HTTPException, Request, Response

from rpm.domain.errors import SignInRateLimited, SignInRefused
from rpm.settings import ApiSettings
from rpm.storage import staff_auth

log = logging.getLogger(__name__)

# NIST SP 800-63B-4 §3.1.1.2: a password used as the only factor has at least 15
# characters; very long inputs are capped so hashing stays bounded.
PASSWORD_MIN_LENGTH = 15
PASSWORD_MAX_LENGTH = 1024
STAFF_ID = r"^[a-z0-9][a-z0-9._-]{0,63}$"
ROLES = ("nurse", "admin")
# Bearer credentials say what they are, so one lookup finds them (and secret scanners can).
STAFF_TOKEN_PREFIX = "rpmt_"  # noqa: S105 - a prefix, not a token
API_KEY_PREFIX = "rpmk_"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SIGN_IN_PATH = "/dashboard/sign-in"
HOME_PATH = "/dashboard/"

_hasher = PasswordHasher()


def check_new_password(password: str) -> None:
    """Raise ``ValueError`` saying why ``password`` may not be set."""
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValueError(f"a password needs at least {PASSWORD_MIN_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise ValueError(f"a password may have at most {PASSWORD_MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    """An argon2id hash (PHC string format) of ``password``."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def token_hash(token: str) -> bytes:
    """What the database keeps of a session token."""
    return hashlib.sha256(token.encode()).digest()


def safe_next(target: str | None) -> str:
    """Where to go after signing in: only a path of the dashboard, never another site."""
    if target and target.startswith("/dashboard/") and "\\" not in target and "//" not in target:
        return target
    return HOME_PATH


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Sessions, sign-in throttling and tokens: ``from_settings`` (defaults are the settings')."""

    session_ttl: timedelta
    cookie_secure: bool
    max_failures: int
    failure_window: timedelta
    token_ttl: timedelta

    @classmethod
    def from_settings(cls, api: ApiSettings) -> AuthConfig:
        return cls(
            session_ttl=timedelta(hours=api.session_ttl_hours),
            cookie_secure=api.session_cookie_secure,
            max_failures=api.signin_max_failures,
            failure_window=timedelta(seconds=api.signin_failure_window_s),
            token_ttl=timedelta(minutes=api.access_token_ttl_min),
        )

    @property
    def cookie_name(self) -> str:
        # The __Host- prefix makes browsers refuse the cookie unless it is Secure, for
        # path / and without a Domain, so a sibling host cannot plant one (RFC 6265bis §4.1.3.2).
        return "__Host-rpm_session" if self.cookie_secure else "rpm_session"

    @property
    def signin_cookie_name(self) -> str:
        return "__Host-rpm_signin" if self.cookie_secure else "rpm_signin"


FailureKey = tuple[str, str]  # (sign-in name, client address)


@dataclass(slots=True)
class FailureLimiter:
    """Failed sign-ins per key within a sliding window. Pure: the caller passes ``now``
    (monotonic seconds). Holds at most ``max_keys`` keys, forgetting the stalest first."""

    max_failures: int
    window_s: float
    max_keys: int = 100_000
    _failures: OrderedDict[FailureKey, deque[float]] = field(default_factory=OrderedDict)

    def retry_after(self, key: FailureKey, now: float) -> float | None:
        """Seconds until ``key`` may try again, or None when it may try now."""
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        if len(times) < self.max_failures:
            return None
        return times[0] + self.window_s - now

    def failed(self, key: FailureKey, now: float) -> None:
        times = self._failures.pop(key, None) or deque(maxlen=self.max_failures)
        times.append(now)
        self._failures[key] = times  # most recent last
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, key: FailureKey) -> None:
        self._failures.pop(key, None)


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The staff member behind a request, and their session's CSRF token."""

    staff_id: str
    display_name: str
    role: str
    csrf_token: str
    expires_at: datetime
    teams: tuple[str, ...] = ()

    @property
    def actor(self) -> str:
        """How audit rows name this person."""
        return f"staff:{self.staff_id}"


class Auth:
    """Sign-in, sessions and CSRF checks over the staff tables."""

    def __init__(self, pool: asyncpg.Pool, config: AuthConfig) -> None:
        self.pool = pool
        self.config = config
        self.limiter = FailureLimiter(
            self.config.max_failures, self.config.failure_window.total_seconds()
        )

    async def _verify(self, username: str, password: str, client: str) -> str:
        """The staff id for correct credentials of an active account.

        Raises ``SignInRateLimited`` while the (name, address) pair is over its limit and
        ``SignInRefused`` for wrong credentials.
        """
        name = username.strip().lower()
        key = (name, client)
        now = asyncio.get_running_loop().time()
        wait = self.limiter.retry_after(key, now)
        if wait is not None:
            log.warning("sign-in refused: too many failures from %s", client)
            raise SignInRateLimited(wait)
        async with self.pool.acquire() as conn:
            creds = await staff_auth.credentials(conn, name) if name else None
        stored = creds.password_hash if creds else _dummy_hash()
        valid = len(password) <= PASSWORD_MAX_LENGTH and await asyncio.to_thread(
            verify_password, stored, password
        )
        if creds is None or not creds.active or not valid:
            self.limiter.failed(key, now)
            # Names typed at a sign-in form are sometimes passwords: log the address only.
            log.warning("sign-in failed from %s", client)
            raise SignInRefused
        self.limiter.succeeded(key)
        if _hasher.check_needs_rehash(creds.password_hash):
            new_hash = await asyncio.to_thread(hash_password, password)
            async with self.pool.acquire() as conn:
                await staff_auth.set_password_hash(conn, name, new_hash)
        return name

    async def sign_in(self, username: str, password: str, client: str) -> tuple[str, SignedIn]:
        """A new session token for correct credentials (see ``_verify`` for refusals)."""
        name = await self._verify(username, password, client)
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + self.config.session_ttl
        async with self.pool.acquire() as conn:
            await staff_auth.delete_expired_sessions(conn)
            await staff_auth.create_session(
                conn,
                token_hash=token_hash(token),
                staff_id=name,
                csrf_token=csrf,
                expires_at=expires,
            )
            record = await staff_auth.session(conn, token_hash(token))
        assert record is not None
        log.info("signed in: %s", name)
        return token, _signed_in(record)

    async def issue_token(self, username: str, password: str, client: str) -> tuple[str, datetime]:
        """A short-lived bearer token (and its expiry) for correct credentials."""
        name = await self._verify(username, password, client)
        token = STAFF_TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + self.config.token_ttl
        async with self.pool.acquire() as conn:
            await staff_auth.delete_expired_tokens(conn)
            await staff_auth.create_token(
                conn, token_hash=token_hash(token), staff_id=name, expires_at=expires
            )
        log.info("access token issued: %s", name)
        return token, expires

    async def session_for(self, request: Request) -> SignedIn | None:
        token = request.cookies.get(self.config.cookie_name)
        if not token or len(token) > 200:
            return None
        async with self.pool.acquire() as conn:
            record = await staff_auth.session(conn, token_hash(token))
        return _signed_in(record) if record else None

    async def current_staff(self, request: Request) -> SignedIn:
        """FastAPI dependency: the signed-in staff member. Otherwise a page (GET asking for
        HTML) is redirected to the sign-in form, anything else gets 401."""
        found = await self.session_for(request)
        if found is not None:
            return found
        if request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", ""):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            location = f"{SIGN_IN_PATH}?next={quote(safe_next(target), safe='/')}"
            raise HTTPException(303, "sign in first", headers={"Location": location})
        raise HTTPException(401, "sign in first")

    def check_csrf(self, staff: SignedIn, request: Request, form_token: str | None = None) -> None:
        """Refuse (403) a state change that does not echo the session's CSRF token."""
        sent = request.headers.get(CSRF_HEADER) or form_token or ""
        if not hmac.compare_digest(sent.encode(), staff.csrf_token.encode()):
            raise HTTPException(403, "missing or wrong CSRF token")

    async def sign_out(self, request: Request, response: Response) -> None:
        token = request.cookies.get(self.config.cookie_name)
        if token:
            async with self.pool.acquire() as conn:
                await staff_auth.delete_session(conn, token_hash(token))
        response.delete_cookie(
            self.config.cookie_name,
            path="/",
            secure=self.config.cookie_secure,
            httponly=True,
            samesite="strict",
        )

    # The sign-in form has no session yet: a double-submit cookie (the form's hidden field
    # must equal it) keeps another site from signing a browser in to an account of its own.
    @staticmethod
    def new_signin_token() -> str:
        return secrets.token_urlsafe(32)

    def signin_token_matches(self, request: Request, form_token: str) -> bool:
        cookie = request.cookies.get(self.config.signin_cookie_name, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), form_token.encode())

    def set_signin_cookie(self, response: Response, token: str) -> None:
        response.set_cookie(
            self.config.signin_cookie_name,
            token,
            max_age=3600,
            path="/",
            secure=self.config.cookie_secure,
            httponly=True,
            samesite="strict",
        )

    def clear_signin_cookie(self, response: Response) -> None:
        response.delete_cookie(
            self.config.signin_cookie_name,
            path="/",
            secure=self.config.cookie_secure,
            httponly=True,
            samesite="strict",
        )

    def set_session_cookie(self, response: Response, token: str) -> None:
        response.set_cookie(
            self.config.cookie_name,
            token,
            max_age=int(self.config.session_ttl.total_seconds()),
            path="/",
            secure=self.config.cookie_secure,
            httponly=True,
            samesite="strict",
        )


def _signed_in(r: staff_auth.SessionRecord) -> SignedIn:
    return SignedIn(r.staff_id, r.display_name, r.role, r.csrf_token, r.expires_at, r.teams)


async def current_staff(request: Request) -> SignedIn:
    """FastAPI dependency for any router of the app: ``Depends(current_staff)``.

    Uses the ``Auth`` that ``create_app`` keeps in ``app.state.auth``.
    """
    auth: Auth = request.app.state.auth
    return await auth.current_staff(request)
