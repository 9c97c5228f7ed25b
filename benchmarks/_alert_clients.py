"""The clients ``alert_latency.py`` drives: the crisis patients and their publisher, a
nurse's dashboard following the live stream, and the watcher of the Twilio stand-in's SMS."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import paho.mqtt.client as paho
from _common import BenchError, Login, paho_client

from simulators.fleet import encode_canonical, topic

if TYPE_CHECKING:
    from simulators.twilio_sink import TwilioSink

CRISIS_CLIENT_ID = "rpm-bench-alerts-crisis"
CRISIS_VALUES = {"systolic": 200, "diastolic": 125, "pulse": 96}  # > 180 / > 120: critical
RETRY_S = 2.0  # the stream's "retry:" (EventSource reconnect delay)


@dataclass(frozen=True, slots=True)
class CrisisPatient:
    patient_id: str
    device_id: str
    phone: str


def crisis_patients(n: int) -> list[CrisisPatient]:
    # 555 numbers are fictional (NANP); one per patient, so an SMS names its patient.
    return [
        CrisisPatient(f"c{i:05d}", f"c{i:05d}-bp_cuff", f"+1555{2_000_000 + i}") for i in range(n)
    ]


class CrisisPublisher:
    """One crisis reading per patient at its due time, from a thread, over one paho client.

    ``published[patient]`` is when ``publish()`` returned; ``acked[patient]`` when the
    broker's PUBACK arrived (paho's network thread).
    """

    def __init__(self, login: Login, patients: Sequence[CrisisPatient], due: Sequence[float]):
        self._login = login
        self._plan = list(zip(patients, due, strict=True))
        self.published: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        self.max_lag_ms = 0.0
        self.error: Exception | None = None
        self._mids: dict[int, str] = {}
        # Written by paho's network thread. No lock of ours: paho calls on_publish holding the
        # mutex that publish() takes, so a lock held around publish() could deadlock.
        self._puback_at: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name="crisis-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        self.acked = {p: self._puback_at[m] for m, p in self._mids.items() if m in self._puback_at}
        if self.error is not None:
            raise BenchError(f"crisis publisher failed: {self.error!r}")

    def _run(self) -> None:
        connected = threading.Event()
        client = paho_client(self._login, CRISIS_CLIENT_ID)

        def on_publish(c: paho.Client, u: object, mid: int, reason: Any, p: object) -> None:
            self._puback_at.setdefault(mid, time.time())

        client.on_connect = lambda c, u, flags, reason, p: connected.set()
        client.on_publish = on_publish
        try:
            client.connect(self._login.host, self._login.port, keepalive=60)
            client.loop_start()
            if not connected.wait(10):
                raise BenchError("crisis publisher could not connect")
            for patient, due in self._plan:
                ahead = due - time.time()
                if ahead > 0:
                    time.sleep(ahead)
                else:
                    self.max_lag_ms = max(self.max_lag_ms, -ahead * 1000)
                stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                item: dict[str, object] = {
                    "metric": "blood_pressure",
                    "measured_at": stamp,
                    "values": CRISIS_VALUES,
                }
                info = client.publish(topic(patient.device_id), encode_canonical(item), qos=1)
                self.published[patient.patient_id] = time.time()
                self._mids[info.mid] = patient.patient_id
            deadline = time.time() + 10
            while len(self._puback_at) < len(self._plan) and time.time() < deadline:
                time.sleep(0.05)
        except Exception as exc:  # reported by join(), in the caller's thread
            self.error = exc
        finally:
            client.disconnect()
            client.loop_stop()


class Dashboard:
    """A nurse's queue page: signed in, following the live stream as EventSource does."""

    def __init__(self, base_url: str, watched: set[str]) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=None))
        self._watched = watched
        self.opened: dict[str, float] = {}  # patient -> arrival of its first "open" event
        self.events: Counter[str] = Counter()  # alert, ingest, heartbeat
        self.connects = 0
        self.connected = asyncio.Event()
        self.signed_in = False
        self.refused: str | None = None

    async def sign_in(self, username: str, password: str) -> None:
        """Sign in through the form, as a browser does (double-submit token, then a cookie)."""
        form = await self._client.get("/dashboard/sign-in", headers={"Accept": "text/html"})
        token = self._client.cookies.get("rpm_signin")
        if form.status_code == 404 or token is None:
            return  # no sign-in on this server: the stream is open to all
        answer = await self._client.post(
            "/dashboard/sign-in",
            data={"username": username, "password": password, "signin_token": token},
        )
        if answer.status_code != 303 or "rpm_session" not in self._client.cookies:
            raise BenchError(f"sign-in as {username} refused: HTTP {answer.status_code}")
        self.signed_in = True

    async def follow(self) -> None:
        """Read the stream until cancelled; reconnect after RETRY_S when it ends."""
        while True:
            try:
                async with self._client.stream(
                    "GET", "/api/alerts/stream", headers={"Accept": "text/event-stream"}
                ) as response:
                    if response.status_code != 200:
                        self.refused = f"HTTP {response.status_code}"
                        return
                    self.connects += 1
                    await self._read(response)
            except httpx.HTTPError:
                pass
            self.connected.clear()
            await asyncio.sleep(RETRY_S)

    async def _read(self, response: httpx.Response) -> None:
        event = "message"
        async for line in response.aiter_lines():
            at = time.time()
            if line.startswith("retry:"):
                self.connected.set()
            elif line.startswith(":"):
                self.events["heartbeat"] += 1
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                self.events[event] += 1
                if event == "alert":
                    change = json.loads(line[5:])
                    patient = change.get("patient_id")
                    if change.get("action") == "open" and patient in self._watched:
                        self.opened.setdefault(patient, at)
            elif not line:
                event = "message"

    async def close(self) -> None:
        await self._client.aclose()


async def watch_sms(sink: TwilioSink, arrived: dict[str, float]) -> None:
    """Note when each number's first message was accepted by the sink (until cancelled)."""
    async for message in sink.accepted():
        arrived.setdefault(message.to, time.time())
