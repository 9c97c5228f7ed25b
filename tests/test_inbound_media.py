"""Photos in patients' replies (alerts/inbound_media.py, rpm/api/twilio_hooks.py): which
links are kept (Twilio's https Media URLs, at most 10) and which are dropped with a reason;
then through the real webhook of the whole running server, called by the local Twilio
stand-in: the links are stored with the message and on the alert's ``patient_reply``, shown
in the inbox (API and page) and in the alert's history on the patient page, the dropped ones
counted in /metrics, and no link or text is logged."""

from __future__ import annotations

import logging

import httpx
import pytest

from alerts.inbound_media import MAX_MEDIA, Dropped, Media, media_of
from rpm.server import Server
from rpm.storage import sms as sms_store
from rpm.storage import staff as staff_store
from simulators.twilio_sink import TwilioSink
from tests.dashboard_helpers import TEAM, add_nurse, sign_in
from tests.twilio_support import add_alert, add_patient

ACCOUNT = "AC" + "0" * 32
PHONE = "+15550100077"
HTML = {"Accept": "text/html"}


def media_url(n: int, host: str = "api.twilio.com", scheme: str = "https") -> str:
    message = "MM" + "1" * 32
    return f"{scheme}://{host}/2010-04-01/Accounts/{ACCOUNT}/Messages/{message}/Media/ME{n:032x}"


def form(*items: tuple[str, str]) -> dict[str, str]:
    out = {"NumMedia": str(len(items))}
    for n, (url, content_type) in enumerate(items):
        out[f"MediaUrl{n}"] = url
        out[f"MediaContentType{n}"] = content_type
    return out


@pytest.mark.pure
def test_twilio_media_links_are_kept_in_order() -> None:
    kept, dropped = media_of(form((media_url(1), "image/jpeg"), (media_url(2), "Image/PNG")))
    assert kept == (Media(media_url(1), "image/jpeg"), Media(media_url(2), "image/png"))
    assert not dropped
    assert media_of({"NumMedia": "0", "Body": "hi"}) == ((), {})


@pytest.mark.pure
@pytest.mark.parametrize(
    ("url", "content_type", "reason"),
    [
        (media_url(1, scheme="http"), "image/jpeg", Dropped.NOT_HTTPS),
        (media_url(1, scheme="javascript"), "image/jpeg", Dropped.NOT_HTTPS),
        (media_url(1, host="evil.example"), "image/jpeg", Dropped.NOT_TWILIO),
        (media_url(1, host="api.twilio.com.evil.example"), "image/jpeg", Dropped.NOT_TWILIO),
        (media_url(1, host="user:pw@api.twilio.com"), "image/jpeg", Dropped.NOT_TWILIO),
        (media_url(1, host="api.twilio.com:8443"), "image/jpeg", Dropped.NOT_TWILIO),
        (media_url(1) + "?x=1", "image/jpeg", Dropped.NOT_TWILIO),
        ("https://api.twilio.com/2010-04-01/Accounts", "image/jpeg", Dropped.NOT_TWILIO),
        ("https://[::1", "image/jpeg", Dropped.NOT_TWILIO),
        (media_url(1), "", Dropped.BAD_TYPE),
        (media_url(1), 'image/jpeg"><script>', Dropped.BAD_TYPE),
    ],
)
def test_other_links_are_dropped_with_a_reason(url: str, content_type: str, reason: str) -> None:
    kept, dropped = media_of(form((media_url(0), "image/gif"), (url, content_type)))
    assert kept == (Media(media_url(0), "image/gif"),)
    assert dropped == {reason: 1}


@pytest.mark.pure
def test_at_most_ten_are_kept() -> None:
    kept, dropped = media_of(form(*((media_url(n), "image/jpeg") for n in range(12))))
    assert [m.url for m in kept] == [media_url(n) for n in range(MAX_MEDIA)]
    assert dropped == {Dropped.TOO_MANY: 2}


@pytest.fixture
async def base(server: Server) -> str:
    assert server.pool is not None
    await add_nurse(server.pool)
    async with server.pool.acquire() as conn:
        await add_patient(conn, "pat-photo", PHONE)
        await staff_store.set_patient_team(conn, "pat-photo", TEAM)
    return f"http://127.0.0.1:{server.settings.api.port}"


async def test_a_photo_reply_is_kept_as_a_link_and_shown_to_the_nurse(
    server: Server, base: str, twilio: TwilioSink, caplog: pytest.LogCaptureFixture
) -> None:
    assert server.pool is not None
    async with server.pool.acquire() as conn:
        alert_id = await add_alert(conn, "pat-photo")
    good = media_url(7)
    sneaky = media_url(8, host="evil.example")
    extra = form((good, "image/jpeg"), (sneaky, "image/jpeg"))
    caplog.set_level(logging.DEBUG)
    answer = await twilio.send_inbound(
        f"{base}/twilio/sms", from_=PHONE, body="my ankle looks like this", extra=extra
    )
    assert answer.status == 200

    async with server.pool.acquire() as conn:
        [message] = await sms_store.messages(conn, patient_id="pat-photo")
    assert message["media"] == [{"url": good, "content_type": "image/jpeg"}]
    assert message["alert_id"] == alert_id
    logged = caplog.text
    assert good not in logged
    assert "evil.example" not in logged
    assert "ankle" not in logged
    assert "1 media kept, dropped not_twilio=1" in logged

    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        assert (await sign_in(http)).status_code == 303
        [item] = (await http.get("/api/inbox")).json()
        assert item["media"] == [{"url": good, "content_type": "image/jpeg"}]
        inbox = await http.get("/dashboard/inbox", headers=HTML)
        assert inbox.status_code == 200
        assert (
            f'<a href="{good}" target="_blank" rel="noopener noreferrer">Photo 1 (image/jpeg)</a>'
            in inbox.text
        )
        assert "evil.example" not in inbox.text

        detail = (await http.get(f"/api/alerts/{alert_id}")).json()
        [reply] = [e for e in detail["events"] if e["action"] == "patient_reply"]
        assert reply["media"] == [{"url": good, "content_type": "image/jpeg"}]
        assert all(e["media"] == [] for e in detail["events"] if e is not reply)
        page = await http.get(f"/dashboard/patients/pat-photo?alert={alert_id}", headers=HTML)
        assert f'href="{good}"' in page.text

        metrics = (await http.get("/metrics")).text
    assert 'rpm_inbound_media_dropped_total{reason="not_twilio"} 1.0' in metrics
