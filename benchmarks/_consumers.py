"""The consumers ``ingest.py`` times, each in a helper process of its own:

    python benchmarks/_consumers.py _gateway|_bare TARGET OUT [split|together]

``_gateway``: the real server as ``rpm serve`` runs it, its counters replaced by a subclass
that notes when each unit of work returned (committed); ``split`` runs the delivery workers
(``--role workers``, SMS to a Twilio stand-in) in a process beside it. ``_bare``: baseline
(a), decode and COPY only, acknowledging after commit. Each emits ``ready``, then ``done``
when TARGET messages are committed, and writes its figures to OUT when stdin closes.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/rules.py is named like the ``rules`` package, which the server imports: keep this
# folder behind the project on sys.path (``_common`` is still found).
sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))

import asyncio
import contextlib
import json
import multiprocessing
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import asyncpg
import paho.mqtt.client as paho
import uvloop
from _common import BenchError, emit
from _report import GcClock
from _server import TWILIO_SID, TWILIO_TOKEN, stdin_closed

BARE_TABLE = "bench_bare_readings"
BARE_COLUMNS = ("measured_at", "device_id", "metric", "components", "received_at")


def workers_main(pipe: Connection) -> None:
    """The delivery workers' process (``rpm serve --role workers``), with the Twilio stand-in."""
    from rpm.cli import run as run_like_rpm_serve

    pipe.send(run_like_rpm_serve(workers_process(pipe)))


async def workers_process(pipe: Connection) -> dict[str, Any]:
    from rpm.server import Server
    from rpm.settings import Settings
    from simulators.twilio_sink import TwilioSink

    sink = TwilioSink(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN)
    settings = Settings().updated(sms={"base_url": await sink.start()})
    server = Server(settings, ("workers",))
    await server.start()
    cpu0 = time.process_time()
    pipe.send("ready")
    await asyncio.to_thread(pipe.recv)  # the gateway's cue to stop
    await server.stop()
    await sink.stop()
    return {"sms_sent": len(sink.messages), "workers_cpu": time.process_time() - cpu0}


async def gateway_process(target: int, split: bool) -> dict[str, Any]:
    """``_gateway``: the real server, as ``rpm serve`` runs it, plus a clock on its commits.

    ``split``: as ``rpm serve --role gateway,api`` beside ``rpm serve --role workers`` (the
    workers' process is started from here, so it stops with the gateway); otherwise every
    role in this one process."""
    # Imported here: publisher processes re-import this module (spawn) and need none of this.
    import logging

    from rpm.pipeline import BatchResult
    from rpm.server import IngestCounters, Server
    from rpm.settings import Settings
    from simulators.twilio_sink import TwilioSink

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    cpu0, gc_clock = time.process_time(), GcClock()

    class CommitClock(IngestCounters):
        """The server's counters, also noting when each unit of work returned (committed)."""

        def __init__(self) -> None:
            super().__init__()
            self.messages = 0
            self.commits: list[tuple[float, int]] = []

        def add(self, r: BatchResult) -> None:
            at = time.time()
            super().add(r)
            before, self.messages = self.messages, self.messages + r.messages
            self.commits.append((at, self.messages))
            if before < target <= self.messages:
                cpu = time.process_time()
                emit("done", at=at, cpu=cpu - cpu0, cpu_total=cpu, **gc_clock.figures())

    sink = TwilioSink(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN)
    workers: dict[str, Any] = {}
    if split:
        ours, theirs = multiprocessing.get_context("spawn").Pipe()
        helper = multiprocessing.get_context("spawn").Process(target=workers_main, args=(theirs,))
        helper.start()
        if not await asyncio.to_thread(ours.poll, 60):
            raise BenchError("the workers' process did not start")
        ours.recv()
        server = Server(Settings(), ("gateway", "api"))
    else:
        settings = Settings().updated(sms={"base_url": await sink.start()})
        server = Server(settings)
    clock = CommitClock()
    server.counters = clock
    await server.start()
    emit("ready", at=time.time(), cpu=time.process_time() - cpu0)
    waits = {asyncio.create_task(stdin_closed()), asyncio.create_task(server.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await server.stop()
        if split:
            ours.send("stop")
            workers = await asyncio.to_thread(ours.recv)
            helper.join(30)
        else:
            await sink.stop()
    return {
        "commits": clock.commits,
        "batches": clock.batches,
        "duplicates": clock.duplicates,
        "quarantined": clock.quarantined,
        "quarantine_reasons": clock.quarantine_reasons,
        "sms_sent": workers.get("sms_sent", len(sink.messages)),
        "workers_cpu": workers.get("workers_cpu"),
    }


def _bare_row(
    topic_name: str, payload: bytes, received_at: datetime
) -> tuple[datetime, str, str, str, datetime]:
    doc = json.loads(payload)
    return (
        datetime.fromisoformat(doc["measured_at"]),
        topic_name.split("/")[3],
        doc["metric"],
        json.dumps(doc["values"]),
        received_at,
    )


async def bare_process(target: int) -> dict[str, Any]:
    """``_bare``: baseline (a), decode and COPY only, acknowledging after commit."""
    # The one aiomqtt consumer outside device_gateways/: a baseline has to talk to the broker.
    import aiomqtt

    from rpm.settings import DatabaseSettings, MqttSettings

    cpu0 = time.process_time()
    s = MqttSettings()
    db = await asyncpg.connect(DatabaseSettings().url.get_secret_value())
    client = aiomqtt.Client(
        s.host,
        s.port,
        username=s.username,
        password=s.password.get_secret_value() if s.password else None,
        identifier=s.client_id,
        clean_session=False,
        protocol=aiomqtt.ProtocolVersion.V311,
        keepalive=30,
    )
    paho_client: paho.Client = client._client  # as device_gateways/mqtt.py: before CONNECT
    paho_client.manual_ack_set(True)
    queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(maxsize=s.batch_max_messages * 4)
    commits: list[tuple[float, int]] = []
    first: float | None = None

    async def read() -> None:
        async for message in client.messages:
            await queue.put(message)

    async def consume() -> None:
        nonlocal first
        loop, total = asyncio.get_running_loop(), 0
        while True:  # the gateway's micro-batching: max messages or max wait, whichever first
            batch = [await queue.get()]
            deadline = loop.time() + s.batch_max_wait_ms / 1000
            while len(batch) < s.batch_max_messages:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            first = first or time.time()
            received_at = datetime.now(UTC)
            rows = [_bare_row(m.topic.value, m.payload, received_at) for m in batch]
            await db.copy_records_to_table(BARE_TABLE, records=rows, columns=BARE_COLUMNS)
            for m in batch:
                paho_client.ack(m.mid, m.qos)
            at, before, total = time.time(), total, total + len(batch)
            commits.append((at, total))
            if before < target <= total:
                cpu = time.process_time()
                emit("done", at=at, first=first, cpu=cpu - cpu0, cpu_total=cpu)

    try:
        async with client:
            await client.subscribe(s.topic, qos=1)
            emit("ready", at=time.time())
            tasks = {asyncio.create_task(t) for t in (read(), consume(), stdin_closed())}
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            for t in done:
                t.result()
    finally:
        await db.close()
    return {"commits": commits, "first": first}


def main(argv: list[str]) -> int:
    role, target, out = argv[0], int(argv[1]), Path(argv[2])
    with contextlib.suppress(KeyboardInterrupt):
        if role == "_gateway":
            # Exactly as `rpm serve` runs: uvloop, and the server's GC settings.
            from rpm.cli import run as run_like_rpm_serve

            split = argv[3:4] != ["together"]
            result = run_like_rpm_serve(gateway_process(target, split))
        else:
            # The baseline gets uvloop too, so the comparison is of the work done.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                result = runner.run(bare_process(target))
        out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
