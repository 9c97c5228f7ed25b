"""CPU per message of MQTT client libraries draining a QoS 1 backlog, acknowledging after a
(simulated) commit per micro-batch, as the gateway does:

    .venv/bin/python benchmarks/mqtt_clients.py            # 100,000 messages per client
    .venv/bin/python benchmarks/mqtt_clients.py --quick    # 20,000
    PYTHONPATH=/tmp/mqttalt .venv/bin/python benchmarks/mqtt_clients.py --clients gmqtt

A private Mosquitto (``mosquitto`` on PATH, a temporary port); N canonical payloads are
published at QoS 1 into each client's offline persistent session (clean session off; MQTT 5:
session expiry), then the client drains them alone on uvloop: messages go into a deque,
every ``--batch`` (or 20 ms) the batch is "committed" (one event-loop turn) and acknowledged,
in order. Clients:

- ``paho``: aiomqtt 2.5 with paho's manual_ack, one packet per socket-readable callback
  (aiomqtt's reader; the gateway before the buffered reader);
- ``mqtt-session``: the gateway's client (``device_gateways.mqtt_session``: MQTT 5 on the
  ``mqtt5`` codec over an asyncio transport, the PUBACKs of a batch in one write);
- ``aiomqtt3``: aiomqtt 3.0.0a1 (MQTT 5 only, on the ``mqtt5`` codec; ``puback`` after the
  batch's commit). Not a dependency either: its package name is the project's aiomqtt 2's, so
  install it apart (``uv pip install --target /tmp/aiomqtt3 aiomqtt==3.0.0a1``) and put that
  first on ``PYTHONPATH``. ``--receive-maximum`` applies to it too.
- ``gmqtt``: gmqtt (MQTT 5, ``optimistic_acknowledgement=False``: the PUBACK goes when the
  message's coroutine returns, here when its batch committed). Not a dependency of the
  project: install it beside (``uv pip install --target /tmp/mqttalt gmqtt``).
  ``--receive-maximum N`` sends MQTT 5's Receive Maximum in its CONNECT (gmqtt's only
  public bound on what it holds; the broker is to send no more than N unacknowledged).

Each drain runs with the garbage collector set as ``rpm serve`` sets it (``rpm/cli.py``).
Figures: consumer CPU seconds (``time.process_time``) from the first message to the last
ack, µs per message, and wall rate; the unacknowledged messages the client held when it sent
its first acknowledgement (``held_at_first_ack``: the broker's window before any PUBACK) and
at most (``max_held``), which is what a broker honouring the in-flight window bounds; one
JSON line per client.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import subprocess
import tempfile
import time
from collections import deque
from typing import Any

import paho.mqtt.client as paho
import uvloop

TOPIC = "rpm/v1/devices/dev-{}/readings"
RECEIVE_MAXIMUM = ("gmqtt", "aiomqtt3")  # the clients --receive-maximum applies to
PAYLOAD = (
    b'{"metric":"blood_pressure","measured_at":"2026-11-23T08:%02d:%02dZ",'
    b'"values":{"systolic":142,"diastolic":91,"pulse":77},"device":{"battery":81}}'
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_inflight_messages 10000\nmax_queued_messages 1000000\nmax_queued_bytes 0\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return proc, port
        time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def register_session(port: int, client_id: str, mqtt5: bool) -> None:
    """Connect once with a persistent session and subscribe, so the backlog is queued."""
    proto = paho.MQTTv5 if mqtt5 else paho.MQTTv311
    kw: dict[str, Any] = {} if mqtt5 else {"clean_session": False}
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, **kw)
    props = None
    if mqtt5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
    else:
        c.connect("127.0.0.1", port)
    c.loop_start()
    info = c.subscribe("rpm/v1/devices/+/readings", qos=1)
    time.sleep(0.3)
    del info
    c.disconnect()
    c.loop_stop()


def publish(port: int, n: int) -> None:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{os.getpid()}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for start in range(0, n, 20_000):  # paho's message ids: 65,535 in flight at most
        infos = [
            c.publish(TOPIC.format(i % 1500), PAYLOAD % ((i // 60) % 60, i % 60), qos=1)
            for i in range(start, min(n, start + 20_000))
        ]
        for info in infos:
            info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def redelivered(port: int, client_id: str, mqtt5: bool) -> int:
    """Messages the broker sends the session again on reconnecting (0: every one was acked)."""
    got = []
    proto = paho.MQTTv5 if mqtt5 else paho.MQTTv311
    kw: dict[str, Any] = {} if mqtt5 else {"clean_session": False}
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, **kw)
    c.on_message = lambda _c, _u, m: got.append(m.mid)
    if mqtt5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
    else:
        c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(1.5)
    c.disconnect()
    c.loop_stop()
    return len(got)


class Drain:
    """Batches messages, 'commits' (one loop turn) and acks, counting CPU from the first."""

    def __init__(self, n: int, batch: int) -> None:
        self.n, self.batch = n, batch
        self.inbox: deque[Any] = deque()
        self.arrived = asyncio.Event()
        self.acked = 0
        self.committing = 0  # popped from the inbox, not yet acknowledged
        self.held_at_first_ack = 0
        self.max_held = 0
        self.cpu0 = self.t0 = 0.0

    def got(self, item: Any) -> None:
        if not self.inbox and self.acked == 0 and self.t0 == 0.0:
            self.cpu0, self.t0 = time.process_time(), time.perf_counter()
        self.inbox.append(item)
        self.max_held = max(self.max_held, len(self.inbox) + self.committing)
        self.arrived.set()

    async def run(self, ack: Any) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        while self.acked < self.n:
            while not self.inbox:
                self.arrived.clear()
                await self.arrived.wait()
            deadline = loop.time() + 0.02
            while len(self.inbox) < self.batch and loop.time() < deadline:
                self.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline - loop.time()):
                        await self.arrived.wait()
            k = min(len(self.inbox), self.batch)
            batch = [self.inbox.popleft() for _ in range(k)]
            self.committing = k
            await asyncio.sleep(0)  # the commit
            if self.acked == 0:
                self.held_at_first_ack = len(self.inbox) + k
            acked = ack(batch)
            if acked is not None:  # a client whose acknowledgements are coroutines
                await acked
            self.committing = 0
            self.acked += len(batch)
        cpu, wall = time.process_time() - self.cpu0, time.perf_counter() - self.t0
        return {
            "cpu_s": cpu,
            "wall_s": wall,
            "held_at_first_ack": self.held_at_first_ack,
            "max_held": self.max_held,
        }


async def drain_paho(port: int, n: int, batch: int) -> dict[str, float]:
    import aiomqtt

    d = Drain(n, batch)
    client = aiomqtt.Client(
        "127.0.0.1", port, identifier="c-paho", clean_session=False, keepalive=30
    )
    pc: paho.Client = client._client  # aiomqtt 2.x has no public manual acknowledgement
    pc.manual_ack_set(True)
    pc.on_message = lambda _c, _u, m: d.got(m)
    async with client:
        await client.subscribe("rpm/v1/devices/+/readings", qos=1)

        def ack(ms: list[paho.MQTTMessage]) -> None:
            for m in ms:
                pc.ack(m.mid, m.qos)

        out = await d.run(ack)
        await asyncio.sleep(0.2)
    return out


async def drain_mqtt_session(port: int, n: int, batch: int) -> dict[str, float]:
    from device_gateways.mqtt_session import Message, MqttSession

    d = Drain(n, batch)
    session = MqttSession(
        host="127.0.0.1",
        port=port,
        client_id="c-mqtt-session",
        username=None,
        password=None,
        on_message=d.got,
    )
    async with session:
        await session.subscribe("rpm/v1/devices/+/readings", qos=1)

        def ack(ms: list[Message]) -> None:
            for m in ms:
                if m.packet_id is not None:
                    session.ack(m.packet_id)

        out = await d.run(ack)
        await asyncio.sleep(0.2)
    return out


async def drain_gmqtt(
    port: int, n: int, batch: int, receive_maximum: int | None
) -> dict[str, float]:
    import gmqtt

    d = Drain(n, batch)
    loop = asyncio.get_running_loop()
    current = [loop.create_future()]

    async def on_message(_c: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        fut = current[0]
        d.got((topic, payload))
        await fut
        return 0  # PubAckReasonCode.SUCCESS, sent after the commit

    def ack(_ms: list[Any]) -> None:
        fut, current[0] = current[0], loop.create_future()
        fut.set_result(None)

    c = gmqtt.Client(
        "c-gmqtt",
        clean_session=False,
        optimistic_acknowledgement=False,
        session_expiry_interval=3600,
        **({"receive_maximum": receive_maximum} if receive_maximum else {}),
    )
    c.on_message = on_message
    await c.connect("127.0.0.1", port, version=gmqtt.constants.MQTTv50)
    c.subscribe("rpm/v1/devices/+/readings", qos=1)
    out = await d.run(ack)
    await asyncio.sleep(0.2)
    await c.disconnect()
    return out


async def drain_aiomqtt3(
    port: int, n: int, batch: int, receive_maximum: int | None
) -> dict[str, float]:
    import aiomqtt  # 3.x, installed beside the project (its 2.x is the project's)

    d = Drain(n, batch)
    client = aiomqtt.Client(
        hostname="127.0.0.1",
        port=port,
        identifier="c-aiomqtt3",
        clean_start=False,
        session_expiry_interval=3600,
        **({"receive_max": receive_maximum} if receive_maximum else {}),
    )
    async with client:
        await client.subscribe("rpm/v1/devices/+/readings", max_qos=aiomqtt.QoS.AT_LEAST_ONCE)

        async def read() -> None:
            async for m in client.messages():
                d.got(m)

        reader = asyncio.create_task(read())

        async def ack(ms: list[Any]) -> None:
            for m in ms:
                await client.puback(m.packet_id)

        out = await d.run(ack)
        await asyncio.sleep(0.2)
        reader.cancel()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="20,000 messages")
    p.add_argument("--messages", type=int, default=None)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--clients", default="paho,mqtt-session", help="comma-separated")
    p.add_argument(
        "--receive-maximum", type=int, default=None, help="gmqtt: MQTT 5 Receive Maximum"
    )
    args = p.parse_args(argv)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)  # as rpm serve runs (rpm/cli.py)
    n = args.messages or (20_000 if args.quick else 100_000)
    with tempfile.TemporaryDirectory(prefix="mqtt-clients-") as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            for name in args.clients.split(","):
                mqtt5 = name in ("gmqtt", "aiomqtt3", "mqtt-session")
                cid = {
                    "paho": "c-paho",
                    "mqtt-session": "c-mqtt-session",
                    "aiomqtt3": "c-aiomqtt3",
                }.get(name, "c-gmqtt")
                register_session(port, cid, mqtt5)
                publish(port, n)
                load = Path("/proc/loadavg").read_text().split()[:3]
                if name == "gmqtt":
                    out = uvloop.run(drain_gmqtt(port, n, args.batch, args.receive_maximum))
                elif name == "aiomqtt3":
                    out = uvloop.run(drain_aiomqtt3(port, n, args.batch, args.receive_maximum))
                elif name == "mqtt-session":
                    out = uvloop.run(drain_mqtt_session(port, n, args.batch))
                else:
                    out = uvloop.run(drain_paho(port, n, args.batch))
                line = {
                    "client": name,
                    "receive_maximum": args.receive_maximum if name in RECEIVE_MAXIMUM else None,
                    "messages": n,
                    "cpu_s": round(out["cpu_s"], 3),
                    "us_per_message": round(1e6 * out["cpu_s"] / n, 2),
                    "per_s": round(n / out["wall_s"], 1),
                    "held_at_first_ack": out["held_at_first_ack"],
                    "max_held": out["max_held"],
                    "redelivered": redelivered(port, cid, mqtt5),
                    "loadavg": " ".join(load),
                }
                print(json.dumps(line), flush=True)
        finally:
            broker.terminate()
            broker.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
