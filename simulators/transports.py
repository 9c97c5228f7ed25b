"""The device side on the wire: one MQTT connection and login per device, signed webhooks.

``MqttFleet`` opens a connection per device with that device's own login (a bounded number
of connects at a time) and publishes at QoS 1: ``publish`` returns once the broker has
acknowledged. ``WebhookSender`` posts vendor payloads to ``/ingest/{format}`` signed with the
integration's HMAC secret, retrying what the server asks to retry (503; 429 after its
Retry-After). Foreign exceptions become ``SendError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiomqtt
import httpx

from device_gateways.webhook_auth import sign
from rpm.domain.errors import SendError

TOPIC = "rpm/v1/devices/{}/readings"
# CONNACK codes for a refused login: MQTT 3.1.1 (4, 5) and MQTT 5 (134, 135).
NOT_AUTHORISED = frozenset({4, 5, 134, 135})
PUBLISH_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ConnectStats:
    connections: int
    seconds: float
    concurrency: int
    refused: tuple[str, ...] = ()  # bad username or password


class MqttFleet:
    """One open connection per device, each authenticated as that device."""

    def __init__(self, host: str, port: int, passwords: Mapping[str, str]) -> None:
        self._host = host
        self._port = port
        self._passwords = passwords
        self._clients: dict[str, aiomqtt.Client] = {}
        self._stack = contextlib.AsyncExitStack()

    async def connect(self, device_ids: Iterable[str], *, concurrency: int = 64) -> ConnectStats:
        """Connect every device, at most ``concurrency`` handshakes at a time."""
        gate = asyncio.Semaphore(concurrency)
        started = time.perf_counter()

        async def one(device_id: str) -> None:
            client = aiomqtt.Client(
                self._host,
                self._port,
                username=device_id,
                password=self._passwords[device_id],
                identifier=device_id,  # a device login may connect with no other client id
                timeout=PUBLISH_TIMEOUT_S,
            )
            async with gate:
                try:
                    await self._stack.enter_async_context(client)
                except aiomqtt.MqttCodeError as exc:
                    if getattr(exc.rc, "value", exc.rc) not in NOT_AUTHORISED:
                        raise SendError(f"device {device_id} could not connect: {exc}") from None
                    refused.append(device_id)
                    return
                except aiomqtt.MqttError as exc:
                    raise SendError(f"device {device_id} could not connect: {exc}") from None
            self._clients[device_id] = client

        ids = sorted(set(device_ids))
        refused: list[str] = []
        await asyncio.gather(*(one(d) for d in ids))
        return ConnectStats(
            len(ids) - len(refused), time.perf_counter() - started, concurrency, tuple(refused)
        )

    async def publish(self, device_id: str, payload: bytes) -> None:
        client = self._clients.get(device_id)
        if client is None:
            raise SendError(f"device {device_id} is not connected")
        try:
            await client.publish(TOPIC.format(device_id), payload, qos=1)
        except aiomqtt.MqttError as exc:
            raise SendError(f"publish of {device_id} failed: {exc}") from None

    async def close(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await self._stack.aclose()
        self._clients.clear()


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    status: int
    stored: int
    duplicates: int
    quarantined: int


class WebhookSender:
    """Posts signed vendor payloads to ``/ingest/{format}`` as the vendor's cloud would."""

    def __init__(self, base_url: str, secrets: Mapping[str, str], *, attempts: int = 5) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=PUBLISH_TIMEOUT_S)
        self._secrets = secrets  # integration id -> HMAC secret
        self._attempts = attempts

    async def post(self, integration: str, payload_format: str, body: bytes) -> WebhookAnswer:
        """Deliver one payload; 200 and 422 (kept in the quarantine) are both delivered."""
        secret = self._secrets[integration]
        for attempt in range(self._attempts):
            headers = {
                "Content-Type": "application/json",
                "X-RPM-Integration": integration,
                "X-RPM-Signature": sign(secret, body, int(time.time())),
            }
            try:
                r = await self._client.post(
                    f"/ingest/{payload_format}", content=body, headers=headers
                )
            except httpx.HTTPError as exc:
                if attempt + 1 == self._attempts:
                    raise SendError(f"webhook to {integration} failed: {exc!r}") from None
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            if r.status_code == 503 and attempt + 1 < self._attempts:
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            if r.status_code == 429 and attempt + 1 < self._attempts:
                # The integration's rate limit (RPM_INGEST_RATE_PER_S): wait as told, as a
                # well-behaved vendor cloud does.
                await asyncio.sleep(_retry_after(r.headers.get("Retry-After")))
                continue
            if r.status_code not in (200, 422):
                raise SendError(f"webhook to {integration} answered {r.status_code}")
            doc = r.json()
            return WebhookAnswer(
                r.status_code, doc["stored"], doc["duplicates"], doc["quarantined"]
            )
        raise SendError(f"webhook to {integration} kept answering 503 or 429")

    async def close(self) -> None:
        await self._client.aclose()


async def drop_session(host: str, port: int, username: str, password: str, client_id: str) -> None:
    """End ``client_id``'s persistent session and discard what the broker queued for it.

    Used before a run starts its gateway on a fresh database: messages queued while that
    gateway was offline belong to earlier runs (and their dropped databases).
    """
    client = aiomqtt.Client(
        host,
        port,
        username=username,
        password=password,
        identifier=client_id,
        clean_session=True,
    )
    try:
        async with client:
            pass
    except aiomqtt.MqttError as exc:
        raise SendError(f"could not reset the session of {client_id}: {exc}") from None


def _retry_after(header: str | None) -> float:
    """Seconds a ``Retry-After`` header asks for (RFC 9110, section 10.2.3: delay-seconds)."""
    try:
        return min(max(float(header or 1), 0.0), 30.0)
    except ValueError:
        return 1.0
