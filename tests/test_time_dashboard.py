"""Time tracking's dashboard routes over HTTP against the whole running server: a form
without the session's CSRF token changes nothing (403); a second timer, a stale edit and
an entry out of bounds come back to the page with a notice saying so; another team's
patient is not found. The app's clock is pinned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from rpm.server import Server
from tests.dashboard_helpers import add_nurse, enroll, form_token, sign_in

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
HTML = {"Accept": "text/html"}
PAGE = "/dashboard/patients/pat-t"


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    assert server.pool is not None
    assert server.app is not None
    server.app.state.clock = lambda: NOW
    await add_nurse(server.pool)
    await enroll(server.pool, "pat-t", {}, [])
    await enroll(server.pool, "pat-other", {}, [], team="elsewhere")
    base = f"http://127.0.0.1:{server.settings.api.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await sign_in(client)).status_code == 303
        yield client


async def post(http: httpx.AsyncClient, path: str, csrf: str, **fields: str) -> httpx.Response:
    return await http.post(path, data={"csrf_token": csrf, "next": PAGE, **fields})


async def test_time_actions_check_csrf_and_say_what_went_wrong(http: httpx.AsyncClient) -> None:
    page = await http.get(PAGE, headers=HTML)
    assert page.status_code == 200
    csrf = form_token(page.text, "csrf-token")
    assert 'id="time"' in page.text

    start = f"{PAGE}/timer/start"
    refused = await post(http, start, "wrong", activity="data_review")
    assert refused.status_code == 403
    assert "Timer running" not in (await http.get(PAGE, headers=HTML)).text

    started = await post(http, start, csrf, activity="data_review")
    assert (started.status_code, started.headers["location"]) == (303, f"{PAGE}?time=started#time")
    again = await post(http, start, csrf, activity="data_review")
    assert again.headers["location"] == f"{PAGE}?time_problem=running#time"
    shown = await http.get(again.headers["location"], headers=HTML)
    assert "Your timer is already running: stop it first." in shown.text
    assert "Timer running" in shown.text

    # A manual entry (local time of the patient, UTC here), one out of bounds, a stale edit.
    add = f"{PAGE}/time-entries"
    fields = {"tz": "UTC", "minutes": "12", "activity": "care_coordination", "note": "pharmacy"}
    added = await post(http, add, csrf, start="2026-11-23T09:00", **fields)
    assert added.headers["location"] == f"{PAGE}?time=added#time"
    future = await post(http, add, csrf, start="2026-11-23T16:00", **fields)
    assert future.headers["location"] == f"{PAGE}?time_problem=invalid#time"
    garbled = await post(http, add, csrf, start="yesterday", **fields)
    assert garbled.headers["location"] == f"{PAGE}?time_problem=invalid#time"
    listed = (await http.get(PAGE, headers=HTML)).text
    assert "12 minutes in 1 entry; interactive communication: not yet." in " ".join(listed.split())
    entry_id = listed.split('data-entry-id="')[1].split('"')[0]
    edit = f"/dashboard/time-entries/{entry_id}/edit"
    edited = await post(http, edit, csrf, version="1", start="2026-11-23T09:05", **fields)
    assert edited.headers["location"] == f"{PAGE}?time=edited#time"
    stale = await post(http, edit, csrf, version="1", start="2026-11-23T09:10", **fields)
    assert stale.headers["location"] == f"{PAGE}?time_problem=stale#time"
    delete = f"/dashboard/time-entries/{entry_id}/delete"
    assert (await post(http, delete, "wrong", version="2")).status_code == 403
    deleted = await post(http, delete, csrf, version="2")
    assert deleted.headers["location"] == f"{PAGE}?time=deleted#time"

    # Another team's patient: no page, no timer, no entry.
    other = "/dashboard/patients/pat-other"
    assert (await http.get(other, headers=HTML)).status_code == 404
    nope = await post(http, f"{other}/time-entries", csrf, start="2026-11-23T09:00", **fields)
    assert nope.headers["location"] == f"{PAGE}?time_problem=missing#time"
    stopped = await post(http, "/dashboard/timer/stop", csrf, note="done")
    assert stopped.headers["location"] == f"{PAGE}?time=stopped#time"
    assert (await post(http, "/dashboard/timer/discard", csrf)).headers["location"] == (
        f"{PAGE}?time_problem=missing#time"
    )
