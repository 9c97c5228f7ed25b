"""A local stand-in for a hospital's FHIR R4 server (the EHR we push to), for tests, the demo
and benchmarks.

It speaks the real protocol (FHIR R4 http.html): ``POST [base]`` with a transaction Bundle
in ``application/fhir+json``, all or nothing; every Bundle is validated with fhir.resources
(R4B models), plus what the models leave out: the request of each entry, the Observation
status value set, and that ``ifNoneExist`` names an identifier the resource carries.
Conditional creates are honoured (http.html#ccreate): when the identifier is already stored
the answer is ``200 OK`` with the existing resource, otherwise ``201 Created``; an entry
without ``ifNoneExist`` is always created, so a client that forgot it shows up as duplicates.
Conditional updates are honoured as HAPI FHIR does (http.html#cond-update): ``PUT
Observation?identifier=system|value`` replaces the one Observation with that identifier
(``200 OK``, a new ``versionId``; none when nothing changed, as HAPI skips no-op updates) or
creates it when none has it (``201 Created``).
Conditional references (``Patient?identifier=system|value``) resolve against ``patients``
when given (the identifiers the EHR knows its patients by, ours or its MRNs; ``--patient`` on
the command line), and are accepted as they are otherwise. An unknown patient is answered as
HAPI FHIR does: 404 for the whole transaction, an OperationOutcome (``processing``) whose
diagnostics are ``HAPI-1091: Invalid match URL "Patient?identifier=..." - No resources match
this search``, naming no entry. Other errors are OperationOutcomes naming the entry
(``Bundle.entry[i]``).

Faults on demand: the next N transactions fail with a status (``fail_next``), every
transaction fails or hangs until lifted (``set_outage``; a hung request is processed once the
outage ends, as a server that was only slow would, though the client gave up long before),
and Observations matching a predicate are refused with 422 (``reject``).

Authentication when configured (``simulators.fhir_auth``): a static bearer token, and/or
OAuth 2.0 client credentials at ``POST /token`` (HTTP Basic client authentication) issuing
tokens that expire.

It counts what it stored and how often each identifier was created. It logs no resource
content, only counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import signal
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from simulators.fhir_auth import FhirAuth
from simulators.fhir_checks import (
    CONDITIONAL_PATIENT,
    FHIR_JSON,
    JSON_TYPES,
    _Refusal,
    outcome,
    transaction_entries,
    validate,
)
from simulators.local_http import listen

__all__ = ["FhirServer", "main"]

_log = logging.getLogger(__name__)

Rejector = Callable[[Mapping[str, Any]], str | None]  # Observation -> diagnostics, or None


class FhirServer:
    """An in-process FHIR server on a loopback port; ``base_url`` once started."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        validate: bool = True,
        bearer_token: str | None = None,
        client: tuple[str, str] | None = None,
        token_ttl_s: float = 3600.0,
        patients: set[tuple[str, str]] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._validate = validate
        self._auth = FhirAuth(bearer_token, client, token_ttl_s)
        self.patients = patients
        self._runner: web.AppRunner | None = None
        self.base_url: str | None = None
        self.token_url: str | None = None
        # What it holds.
        self.observations: dict[str, dict[str, Any]] = {}
        self._by_identifier: dict[tuple[str, str], str] = {}
        self.creates: Counter[tuple[str, str]] = Counter()  # creations per identifier
        self._ids = itertools.count(1)
        # What it was asked.
        self.transactions = 0  # answered 2xx
        self.created = 0
        self.existing = 0
        self.updated = 0  # conditional updates that changed a stored Observation
        self.refused = 0  # answered 4xx
        self.failed = 0  # faults injected
        self.requests = 0
        # Faults.
        self._fail_next: list[int] = []
        self._outage: int | str | None = None
        self._released = asyncio.Event()
        self._released.set()
        self._reject: Rejector | None = None
        self._reject_blames = True
        self._changed = asyncio.Condition()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen; return the FHIR base URL, e.g. ``http://127.0.0.1:54321/fhir``."""
        if self._runner is not None:
            raise RuntimeError("FhirServer is already started")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/fhir", self._transaction)
        app.router.add_post("/fhir/", self._transaction)
        app.router.add_get("/fhir/metadata", self._metadata)
        app.router.add_get("/fhir/Observation", self._search)
        app.router.add_get("/fhir/Observation/{id}", self._read)
        app.router.add_post("/token", self._token)
        app.router.add_get("/_stats", self._stats)
        self._runner, root = await listen(app, self._host, self._port)
        self.base_url, self.token_url = f"{root}/fhir", f"{root}/token"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening (hung requests are let go first); safe to call twice."""
        self._outage = None
        self._released.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- faults -------------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next ``count`` transactions are answered ``status`` (an OperationOutcome)."""
        self._fail_next.extend([status] * count)

    def set_outage(self, mode: int | str | None) -> None:
        """Every transaction fails with status ``mode``, or ``"hang"``s, until ``None``."""
        if mode is not None and mode != "hang" and not (isinstance(mode, int) and mode >= 400):
            raise ValueError(f"outage mode is an error status or 'hang', not {mode!r}")
        self._outage = mode
        if mode == "hang":
            self._released.clear()
        else:
            self._released.set()

    def reject(self, rule: Rejector | None, *, blame: bool = True) -> None:
        """Refuse (422) any transaction holding an Observation ``rule`` has diagnostics for;
        ``blame``: name that entry in the OperationOutcome's expression."""
        self._reject, self._reject_blames = rule, blame

    def revoke_tokens(self) -> None:
        """Forget every token issued at /token (the next use of one gets 401)."""
        self._auth.revoke_tokens()

    @property
    def tokens_issued(self) -> int:
        return self._auth.tokens_issued

    # --- what it holds ----------------------------------------------------------------------

    def identifiers(self) -> set[tuple[str, str]]:
        return set(self._by_identifier)

    def duplicates(self) -> dict[tuple[str, str], int]:
        """Identifiers created more than once (a conditional create not honoured or not asked)."""
        return {k: n for k, n in self.creates.items() if n > 1}

    async def wait_for(self, count: int, timeout: float = 10.0) -> int:  # noqa: ASYNC109
        """Wait until at least ``count`` Observations are stored; return how many are."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.observations) >= count)
        return len(self.observations)

    # --- handlers -----------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return self._auth.authorized(request.headers.get("Authorization", ""))

    async def _transaction(self, request: web.Request) -> web.Response:
        self.requests += 1
        try:
            if not self._authorized(request):
                raise _Refusal(401, outcome("login", "a valid bearer token is required"))
            body = await request.read()  # whole, before a fault: a hung request is kept
            await self._faults()
            if request.content_type not in JSON_TYPES:
                raise _Refusal(
                    415, outcome("not-supported", f"{request.content_type} not accepted")
                )
            try:
                bundle = json.loads(body)
            except ValueError:
                raise _Refusal(400, outcome("structure", "the body is not JSON")) from None
            if self._validate:
                validate(bundle)
            entries = self._check(bundle)
            answer = self._apply(entries)
        except _Refusal as refusal:
            if 400 <= refusal.status < 500:
                self.refused += 1
            return _fhir(refusal.status, refusal.outcome)
        self.transactions += 1
        async with self._changed:
            self._changed.notify_all()
        return _fhir(200, answer)

    async def _faults(self) -> None:
        if self._fail_next:
            self.failed += 1
            status = self._fail_next.pop(0)
            raise _Refusal(status, outcome("transient", f"injected failure {status}"))
        if self._outage == "hang":
            self.failed += 1
            await self._released.wait()  # processed normally afterwards: "only slow"
        elif isinstance(self._outage, int):
            self.failed += 1
            raise _Refusal(self._outage, outcome("transient", "service unavailable (outage)"))

    def _check(self, bundle: Any) -> list[tuple[dict[str, Any], tuple[str, str] | None, bool]]:
        """The entries to apply with their conditional identifier and whether each is a
        conditional update; or a refusal."""
        out = []
        for entry in transaction_entries(bundle):
            self._resolve_subject(entry.resource, entry.where)
            if self._reject is not None:
                why = self._reject(entry.resource)
                if why is not None:
                    blame = entry.where if self._reject_blames else None
                    raise _Refusal(422, outcome("business-rule", why, blame))
            out.append((entry.resource, entry.key, entry.update))
        return out

    def _resolve_subject(self, resource: Mapping[str, Any], where: str) -> None:
        reference = str((resource.get("subject") or {}).get("reference", ""))
        m = CONDITIONAL_PATIENT.match(reference)
        if m is None or self.patients is None:
            return
        if (m["system"], m["value"]) not in self.patients:
            # HAPI: a ResourceNotFoundException for the whole transaction, no entry named.
            raise _Refusal(
                404,
                outcome(
                    "processing",
                    f'HAPI-1091: Invalid match URL "{reference}" - No resources match this search',
                ),
            )

    def _apply(
        self, entries: Sequence[tuple[dict[str, Any], tuple[str, str] | None, bool]]
    ) -> dict[str, Any]:
        """Store the entries (no await inside: atomic for this server)."""
        now = datetime.now(UTC).isoformat()
        answers = []
        for resource, key, update in entries:
            existing = self._by_identifier.get(key) if key is not None else None
            if existing is not None and update:
                answers.append(self._update(existing, resource, now))
                continue
            if existing is not None:
                self.existing += 1
                answers.append(self._answer("200 OK", existing))
                continue
            obs_id = str(next(self._ids))
            stored = {
                **resource,
                "id": obs_id,
                "meta": {**(resource.get("meta") or {}), "versionId": "1", "lastUpdated": now},
            }
            self.observations[obs_id] = stored
            for ident in resource.get("identifier") or []:
                ident_key = (ident.get("system", ""), ident.get("value"))
                self._by_identifier.setdefault(ident_key, obs_id)
                self.creates[ident_key] += 1
            self.created += 1
            answers.append(self._answer("201 Created", obs_id))
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}

    def _update(self, obs_id: str, resource: dict[str, Any], now: str) -> dict[str, Any]:
        """Replace a stored Observation (a new version), unless nothing changed."""
        old = self.observations[obs_id]
        same = {k: v for k, v in old.items() if k not in ("id", "meta")} == {
            k: v for k, v in resource.items() if k not in ("id", "meta")
        }
        if not same:
            version = str(int(old["meta"]["versionId"]) + 1)
            meta = {**(resource.get("meta") or {}), "versionId": version, "lastUpdated": now}
            self.observations[obs_id] = {**resource, "id": obs_id, "meta": meta}
            self.updated += 1
        else:
            self.existing += 1
        return self._answer("200 OK", obs_id)

    def _answer(self, status: str, obs_id: str) -> dict[str, Any]:
        meta = self.observations[obs_id]["meta"]
        return {
            "response": {
                "status": status,
                "location": f"Observation/{obs_id}/_history/{meta['versionId']}",
                "etag": f'W/"{meta["versionId"]}"',
                "lastModified": meta["lastUpdated"],
            }
        }

    async def _read(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _fhir(401, outcome("login", "a valid bearer token is required"))
        obs = self.observations.get(request.match_info["id"])
        if obs is None:
            return _fhir(404, outcome("not-found", "no such Observation"))
        return _fhir(200, obs)

    async def _search(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _fhir(401, outcome("login", "a valid bearer token is required"))
        wanted = request.query.get("identifier")
        if wanted is None:
            found = list(self.observations.values())
        else:
            system, _, value = wanted.rpartition("|")
            obs_id = self._by_identifier.get((system, value))
            found = [self.observations[obs_id]] if obs_id else []
        if request.query.get("_summary") == "count":
            return _fhir(200, {"resourceType": "Bundle", "type": "searchset", "total": len(found)})
        return _fhir(
            200,
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(found),
                "entry": [{"resource": o, "search": {"mode": "match"}} for o in found[:1000]],
            },
        )

    async def _metadata(self, request: web.Request) -> web.Response:
        return _fhir(
            200,
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "date": "2026-11-23",
                "kind": "instance",
                "fhirVersion": "4.0.1",
                "format": ["json"],
                "rest": [
                    {
                        "mode": "server",
                        "resource": [
                            {
                                "type": "Observation",
                                "interaction": [
                                    {"code": "read"},
                                    {"code": "search-type"},
                                    {"code": "update"},
                                ],
                                "conditionalCreate": True,
                                "conditionalUpdate": True,
                            }
                        ],
                        "interaction": [{"code": "transaction"}],
                    }
                ],
            },
        )

    async def _token(self, request: web.Request) -> web.Response:
        """OAuth 2.0 client credentials (``FhirAuth.token``)."""
        form = await request.post()
        status, answer = self._auth.token(form, request.headers.get("Authorization", ""))
        return web.json_response(answer, status=status)

    def stats(self) -> dict[str, int]:
        return {
            "stored": len(self.observations),
            "transactions": self.transactions,
            "created": self.created,
            "existing": self.existing,
            "updated": self.updated,
            "refused": self.refused,
            "failed": self.failed,
            "requests": self.requests,
            "duplicates": len(self.duplicates()),
        }

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


def _fhir(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=FHIR_JSON)


# ---------------------------------------------------------------------------------------------
# Command line, for benchmarks and the demo: python -m simulators.fhir_server --port N


async def _serve(args: argparse.Namespace) -> None:
    patients = set(args.patient) if args.patient else None
    server = FhirServer(
        host=args.host,
        port=args.port,
        validate=not args.no_validate,
        bearer_token=args.token,
        patients=patients,
    )
    base_url = await server.start()
    print(json.dumps({"event": "ready", "base_url": base_url}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Stop when stdin closes (the parent's cue), as benchmark helper processes do.
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.readline() else None)
    try:
        await stop.wait()
    finally:
        print(json.dumps({"event": "done", **server.stats()}), flush=True)
        await server.stop()


def _patient_identifier(text: str) -> tuple[str, str]:
    system, sep, value = text.partition("|")
    if not (sep and system and value):
        raise argparse.ArgumentTypeError(f"{text!r} is not system|value")
    return system, value


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m simulators.fhir_server``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument(
        "--patient",
        action="append",
        type=_patient_identifier,
        metavar="SYSTEM|VALUE",
        help="a patient identifier the server knows (repeatable); without any, every "
        "Patient?identifier= reference is accepted",
    )
    parser.add_argument(
        "--no-validate", action="store_true", help="skip fhir.resources validation (benchmarks)"
    )
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
