"""What the FHIR routes share: their route class, content negotiation, search parameters,
links and paging, and who sees which patient."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from rpm.domain.errors import NotAcceptableError, SearchError
from rpm.fhir import bundles
from rpm.fhir.search import (
    Params,
    Token,
    count_of,
    decode_cursor,
    encode_cursor,
    parse_references,
    parse_tokens,
    summary_only,
    wants_total,
)
from rpm.storage import fhir as fhir_store
from rpm.storage import staff as staff_store
from rpm.storage.pool import Conn

from . import errors
from .access import Principal

_JSON_FORMATS = frozenset({"json", "application/json", errors.FHIR_JSON})
_ACCEPTED = frozenset({"*/*", "application/*", "application/json", errors.FHIR_JSON})
_MAX_OFFSET = 10_000  # offset paging (alerts, SMS) goes this deep


class FhirRoute(APIRoute):
    """Under ``/fhir`` even our bugs are answered with an OperationOutcome.

    Our errors and FastAPI's refusals reach the app's handlers (rpm/api/errors.py), which
    answer them as OperationOutcomes here. Any other exception would reach starlette's
    ``ServerErrorMiddleware``, which answers plain text and re-raises; so this route class
    catches it, and answers 503 (database away) or 500 (our bug, logged) as FHIR.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def outcome_on_failure(request: Request) -> Response:
            try:
                return await handler(request)
            except errors.HANDLED:
                raise
            except Exception as exc:
                return errors.unexpected(request, exc)

        return outcome_on_failure


def negotiate(request: Request) -> None:
    """``NotAcceptableError`` unless the client takes JSON (``_format`` or ``Accept``)."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        ok = fmt in _JSON_FORMATS
    else:
        accept = request.headers.get("accept")
        ok = not accept or any(
            part.split(";")[0].strip() in _ACCEPTED for part in accept.split(",")
        )
    if not ok:
        raise NotAcceptableError("this server speaks JSON")


def answer(body: dict[str, Any], status: int = 200) -> Response:
    return errors.fhir_json(status, body)


FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024
# The OpenAPI of ``POST [type]/_search``: the search's parameters as an optional form body.
POST_SEARCH: dict[str, Any] = {
    "openapi_extra": {
        "requestBody": {
            "required": False,
            "content": {
                FORM: {"schema": {"type": "object", "additionalProperties": {"type": "string"}}}
            },
        }
    },
    "responses": {
        415: {
            "description": "a body that is not a form (OperationOutcome)",
            "content": {errors.FHIR_JSON: {"schema": {"type": "object"}}},
        }
    },
}


async def search_params(request: Request) -> Params:
    """A search's parameters: the query's, and for ``POST [type]/_search`` its form body's
    too (R4 http.html#search: both count, the body as application/x-www-form-urlencoded)."""
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    items = list(request.query_params.multi_items())
    body = await request.body() if request.method == "POST" else b""
    if body:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != FORM:
            raise HTTPException(415, f"POST _search takes its parameters as {FORM}")
        if len(body) > MAX_FORM_BYTES:
            raise SearchError(f"the search's form is over {MAX_FORM_BYTES} bytes")
        try:
            items += parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise SearchError("the search's form is not UTF-8") from None
    return Params.of(items, strict="handling=strict" in prefer)


def base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def links(
    request: Request, kind: str, used: Sequence[tuple[str, str]], cursor: str | None
) -> tuple[str, str | None]:
    """The self link (the parameters used) and the next link (with ``cursor``)."""
    url = f"{base(request)}/{kind}"
    self_url = f"{url}?{urlencode(used)}" if used else url
    if cursor is None:
        return self_url, None
    rest = [(k, v) for k, v in used if k != "_cursor"]
    return self_url, f"{url}?{urlencode([*rest, ('_cursor', cursor)])}"


async def visible(conn: Conn, who: Principal, patient_ids: Sequence[str]) -> list[str]:
    """Those of ``patient_ids`` the caller may see (nurses: their care teams' patients)."""
    if who.teams is None:
        return list(patient_ids)
    teams = await staff_store.patient_teams(conn, patient_ids)
    return [p for p in patient_ids if p in teams and who.sees(teams[p])]


def one_string(v: list[Any]) -> bool:
    return len(v) == 1 and isinstance(v[0], str)


def token_filter(params: Params, name: str, system: str | None) -> list[str] | None:
    """Codes of a token parameter (repeats AND: intersect); None when not given."""
    found: set[str] | None = None
    for value in params.all(name):
        tokens = parse_tokens(value)
        codes = {t.code for t in tokens} if system is None else set(_codes(tokens, system))
        found = codes if found is None else found & codes
    return sorted(found) if found is not None else None


def _codes(tokens: Sequence[Token], system: str) -> list[str]:
    return [t.code for t in tokens if t.system in (None, system)]


def id_page(
    request: Request,
    kind: str,
    used: Sequence[tuple[str, str]],
    rows: Sequence[dict[str, Any]],
    count: int,
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]],
    total: int | None,
) -> Response:
    page = list(rows[:count])
    cursor = None
    if len(rows) > count and page:
        cursor = encode_cursor([page[-1]["id"]])
    self_url, next_url = links(request, kind, used, cursor)
    found = [to_fhir(row) for row in page]
    return answer(bundles.searchset(found, base(request), self_url, next_url=next_url, total=total))


def page_size(params: Params) -> int:
    """Resources per page: ``_count``, and 0 for ``_summary=count`` (the total alone)."""
    return 0 if summary_only(params) else count_of(params)


async def total_of(params: Params, count: Callable[[], Coroutine[Any, Any, int]]) -> int | None:
    """The search's total (``count()``), unless ``_total=none`` spares it."""
    return await count() if wants_total(params) else None


def offset_page(params: Params) -> tuple[int, int]:
    after = decode_cursor(params.one("_cursor"), lambda v: len(v) == 1 and isinstance(v[0], int))
    offset = int(after[0]) if after else 0
    count = page_size(params)
    if offset < 0 or offset + count > _MAX_OFFSET:
        raise SearchError(f"pages go {_MAX_OFFSET} results deep; narrow the search")
    return offset, count


def offset_answer(
    request: Request,
    kind: str,
    used: Sequence[tuple[str, str]],
    rows: Sequence[dict[str, Any]],
    offset: int,
    count: int,
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]],
    total: int | None,
) -> Response:
    page = list(rows[offset : offset + count])
    more = count > 0 and len(rows) > offset + count
    cursor = encode_cursor([offset + count]) if more else None
    self_url, next_url = links(request, kind, used, cursor)
    found = [to_fhir(row) for row in page]
    return answer(bundles.searchset(found, base(request), self_url, next_url=next_url, total=total))


async def named_patients(
    conn: Conn, who: Principal, params: Params, names: Sequence[str]
) -> list[str] | None:
    """Our ids of the patients the reference parameters ``names`` name (a comma for any of
    several; repeats AND), among those the caller may see: None when none is named, [] when
    none named is known or visible."""
    found: set[str] | None = None
    for name in names:
        for value in params.all(name):
            refs = parse_references(value, "Patient")
            ids = set(await fhir_store.resolve_patients(conn, refs)) if refs else set()
            found = ids if found is None else found & ids
    if found is None:
        return None
    return await visible(conn, who, sorted(found))
