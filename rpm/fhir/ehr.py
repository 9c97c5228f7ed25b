"""The EHR's FHIR endpoint: the only module that talks to it (httpx).

It posts transaction Bundles to ``[base]`` (FHIR R4 http.html#transaction) and turns every
answer into results or one of our errors:

::

    DeliveryError
    ├── TransientDeliveryError
    │   └── EhrUnavailable   network error, timeout, 5xx, 429, 408, a garbled 2xx, or the
    │                        endpoint refusing us as a whole (401, 403, 405, a 404 that is
    │                        not an OperationOutcome, ...): retried with backoff; the outbox
    │                        item fails after max attempts
    └── PermanentDeliveryError
        └── EhrRefused       400, 409, 412, 413, 422, and 404 with an OperationOutcome: the
                             Bundle's content was refused, with the EHR's OperationOutcome;
                             the caller isolates the bad entries

A 404 to a transaction with an OperationOutcome is a refused entry: HAPI FHIR answers a
conditional reference it cannot resolve (``Patient?identifier=...``, a patient it does not
know) with 404 for the whole transaction (``HAPI-1091: Invalid match URL ... - No resources
match this search``). A 404 without one (an HTML page, a proxy) says the base URL is wrong.

Authentication: a static bearer token, or OAuth 2.0 client credentials (RFC 6749 §4.4,
client secret in HTTP Basic, §2.3.1) with the token cached until shortly before it expires
and fetched again once when the EHR answers 401.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
import orjson

from rpm.domain.errors import ConfigurationError, EhrRefused, EhrUnavailable, MalformedResponse
from rpm.domain.text_input import whole_number
from rpm.settings import EhrSettings

from .bundles import EntryResult, operation_outcome, transaction_results

FHIR_JSON = "application/fhir+json"
# 4xx answers about the Bundle's content (RFC 9110 §15.5; FHIR R4 http.html#2.21.0.15): the
# bad entries can be found by sending parts of the Bundle. Other 4xx say the endpoint or our
# credentials are wrong, which no part of the Bundle would change.
REFUSED_STATUSES = frozenset({400, 409, 412, 413, 422})
# Refused content too, when the answer is a FHIR OperationOutcome (see the module docstring).
REFUSED_WITH_OUTCOME = frozenset({404})
_TOKEN_MARGIN_S = 30.0  # fetch a new token this long before the old one expires


class Auth(Protocol):
    async def authorization(self, http: httpx.AsyncClient) -> str | None: ...

    def forget(self) -> bool:
        """Drop a cached credential; True when asking again may help."""
        ...


class NoAuth:
    async def authorization(self, http: httpx.AsyncClient) -> str | None:
        return None

    def forget(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class BearerToken:
    token: str

    async def authorization(self, http: httpx.AsyncClient) -> str | None:
        return f"Bearer {self.token}"

    def forget(self) -> bool:
        return False


class ClientCredentials:
    """OAuth 2.0 client credentials grant; the access token is cached until near expiry."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_url = token_url
        self._client = (client_id, client_secret)
        self._scope = scope
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.fetched = 0  # tokens fetched so far

    async def authorization(self, http: httpx.AsyncClient) -> str | None:
        async with self._lock:
            if self._token is None or self._clock() >= self._expires:
                await self._fetch(http)
            return f"Bearer {self._token}"

    def forget(self) -> bool:
        self._token = None
        return True

    async def _fetch(self, http: httpx.AsyncClient) -> None:
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        try:
            resp = await http.post(
                self._token_url,
                data=form,
                auth=self._client,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise EhrUnavailable(f"token endpoint: {exc.__class__.__name__}") from exc
        if resp.status_code != 200:
            raise EhrUnavailable(
                f"token endpoint answered {resp.status_code}", status=resp.status_code
            )
        try:
            body = resp.json()
            token = str(body["access_token"])
            lifetime = float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError) as exc:
            raise EhrUnavailable("token endpoint: no access_token in its answer") from exc
        self._token = token
        self._expires = self._clock() + max(0.0, lifetime - _TOKEN_MARGIN_S)
        self.fetched += 1


def auth_from_settings(ehr: EhrSettings) -> Auth:
    if ehr.token_url:
        if not ehr.client_id or ehr.client_secret is None:
            raise ConfigurationError(
                "RPM_EHR_TOKEN_URL needs RPM_EHR_CLIENT_ID and RPM_EHR_CLIENT_SECRET"
            )
        return ClientCredentials(
            ehr.token_url, ehr.client_id, ehr.client_secret.get_secret_value(), ehr.scope
        )
    if ehr.bearer_token is not None:
        return BearerToken(ehr.bearer_token.get_secret_value())
    return NoAuth()


class EhrClient:
    """Posts transaction Bundles to one FHIR base URL."""

    def __init__(
        self,
        base_url: str,
        auth: Auth | None = None,
        *,
        timeout_s: float,
        max_connections: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = auth or NoAuth()
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections),
            headers={"Accept": FHIR_JSON},
        )

    @classmethod
    def from_settings(cls, ehr: EhrSettings) -> EhrClient:
        if ehr.fhir_base_url is None:
            raise ConfigurationError("RPM_EHR_FHIR_BASE_URL is not set")
        return cls(
            ehr.fhir_base_url,
            auth_from_settings(ehr),
            timeout_s=ehr.timeout_s,
            max_connections=ehr.concurrency,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def transaction(self, bundle: dict[str, Any]) -> list[EntryResult]:
        """Post one transaction Bundle; one result per entry, in order."""
        body = orjson.dumps(bundle)
        resp = await self._post(body)
        if resp.status_code == 401 and self._auth.forget():
            resp = await self._post(body)  # the token may have been revoked or expired early
        status = resp.status_code
        if 200 <= status < 300:
            try:
                return transaction_results(orjson.loads(resp.content), len(bundle["entry"]))
            except (orjson.JSONDecodeError, MalformedResponse) as exc:
                raise EhrUnavailable(
                    f"{status} with an unusable answer: {exc}", status=status
                ) from exc
        outcome, fhir = _outcome(resp)
        if status in REFUSED_STATUSES or (status in REFUSED_WITH_OUTCOME and fhir):
            raise EhrRefused(f"{status} {resp.reason_phrase}", status=status, outcome=outcome)
        raise EhrUnavailable(
            f"{status} {resp.reason_phrase}",
            status=status,
            outcome=outcome,
            retry_after_s=_retry_after(resp),
        )

    async def _post(self, body: bytes) -> httpx.Response:
        try:
            authorization = await self._auth.authorization(self._http)
            headers = {"Content-Type": FHIR_JSON}
            if authorization:
                headers["Authorization"] = authorization
            async with asyncio.timeout(self._timeout_s):
                return await self._http.post(self.base_url, content=body, headers=headers)
        except TimeoutError as exc:
            raise EhrUnavailable(f"no answer within {self._timeout_s:g} s") from exc
        except httpx.HTTPError as exc:
            raise EhrUnavailable(f"{exc.__class__.__name__}: {exc}") from exc


def _outcome(resp: httpx.Response) -> tuple[dict[str, Any], bool]:
    """The answer's OperationOutcome, or one made of the status and text; and whether the
    EHR sent one (a FHIR server speaking) rather than something else at that URL."""
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body, True
    text = resp.text[:500] if resp.content else resp.reason_phrase
    return operation_outcome("exception", f"{resp.status_code}: {text}"), False


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    seconds = whole_number(value.strip(), max_digits=9)
    if seconds is not None:
        return float(seconds)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
