"""What benchmarks share: the device side (paho publishers of a virtual fleet, persistent
sessions), helper processes, CPU and memory accounting, percentiles and tables, and the frame
of a run (``run_with_services``). With ``_server`` (logins, ``rpm serve``, the services' CPU)
and ``_report`` (the compact table and the final JSON line) it is the harness every script
uses; ``_consumers``, ``_ingest_phases``, ``_alert_*``, ``_rule_fleet`` and ``_engagement_*``
hold one script's parts.

Publishers run in ``multiprocessing`` spawn processes, which import this module and the
benchmark's own, so neither imports the server at the top.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from rpm.domain.errors import LocalServicesError
from simulators.fleet import (
    VirtualDevice,
    VirtualPatient,
    encode_canonical,
    make_fleet,
    reading,
    topic,
)
from simulators.localservices import LocalServices

TOPIC_FILTER = "rpm/v1/devices/+/readings"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark could not run a step; the message says which and shows the log tail."""


def server_env(endpoints: Any, client_id: str, **settings: str) -> dict[str, str]:
    """The environment of an ``rpm serve`` child: RPM_* as ``rpm services env`` prints them
    for ``endpoints`` (a ``simulators.localservices.ServiceEndpoints``), in local mode, plus
    ``settings``; every other RPM_* variable of this process is left out, so the server runs at
    its defaults."""
    e = endpoints
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env.update(
        RPM_DATABASE_URL=e.database_url,
        RPM_MQTT_HOST=e.mqtt_host,
        RPM_MQTT_PORT=str(e.mqtt_port),
        RPM_MQTT_USERNAME=e.mqtt_gateway_username,
        RPM_MQTT_PASSWORD=e.mqtt_gateway_password,
        RPM_MQTT_ADMIN_USERNAME=e.mqtt_admin_username,
        RPM_MQTT_ADMIN_PASSWORD=e.mqtt_admin_password,
        RPM_MQTT_CLIENT_ID=client_id,
        RPM_API_HOST="127.0.0.1",
        RPM_DEPLOYMENT="local",  # loopback and the Twilio stand-in: no production checks
    )
    env.update(settings)
    return env


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --- the device side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    """An enrolled fleet, and the measured-time span (epoch s) of pre-loaded readings."""

    patients: int
    span_start: float
    span_end: float

    def fleet(self) -> list[VirtualPatient]:
        return make_fleet(self.patients, start=utc(self.span_start), end=utc(self.span_end))

    def devices(self) -> list[tuple[VirtualPatient, VirtualDevice]]:
        return [(p, d) for p in self.fleet() for d in p.devices]


@dataclass(frozen=True, slots=True)
class Login:
    host: str
    port: int
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class PublishJob:
    """One publisher process's share: messages ``part``, ``part + parts``, ... of ``count``.

    Message ``i`` is one canonical reading of device ``i % devices``. Pre-loaded (``rate`` 0),
    its measured time is spread evenly over the workload's span; paced, it is due at
    ``start_at + i / rate`` and its measured time is its publish wall time.
    """

    login: Login
    client_id: str
    workload: Workload
    part: int
    parts: int
    count: int
    seed: int
    rate: float = 0.0
    start_at: float = 0.0
    inflight: int = 1000
    timeout: float = 120.0


@dataclass(frozen=True, slots=True)
class PublishResult:
    sent: int
    acked: int
    seconds: float
    max_lag_ms: float  # how far behind its schedule a paced publisher fell


def _paho(login: Login, client_id: str, *, clean_session: bool) -> paho.Client:
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
    )
    client.username_pw_set(login.username, login.password)
    return client


def paho_client(login: Login, client_id: str, *, clean_session: bool = True) -> paho.Client:
    """A device-side paho client (MQTT 3.1.1) with ``login``, not yet connected."""
    return _paho(login, client_id, clean_session=clean_session)


def publish(job: PublishJob) -> PublishResult:
    """A publisher process: its messages at QoS 1, then wait for every PUBACK."""
    devices = job.workload.devices()
    rng = np.random.default_rng([job.seed, job.part])
    mine = range(job.part, job.count, job.parts)
    span = job.workload.span_end - job.workload.span_start
    preloaded: list[tuple[str, bytes]] = []
    if not job.rate:  # built before connecting: only the publishing is timed
        for i in mine:
            patient, device = devices[i % len(devices)]
            t = utc(job.workload.span_start + (i + 0.5) * span / job.count)
            item = reading(patient, device, t, rng)
            preloaded.append((topic(device.device_id), encode_canonical(item)))
    connected, all_acked = threading.Event(), threading.Event()
    acked = 0

    def on_connect(c: paho.Client, u: object, flags: object, reason: Any, p: object) -> None:
        if not reason.is_failure:
            connected.set()

    def on_publish(c: paho.Client, u: object, mid: int, reason: object, p: object) -> None:
        nonlocal acked
        acked += 1
        if acked >= len(mine):
            all_acked.set()

    client = _paho(job.login, job.client_id, clean_session=True)
    client.max_inflight_messages_set(job.inflight)
    client.max_queued_messages_set(0)
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(job.login.host, job.login.port, keepalive=60)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise BenchError(f"publisher {job.client_id} could not connect")
        started, max_lag = time.time(), 0.0
        if job.rate:
            started = job.start_at
            for i in mine:
                ahead = job.start_at + i / job.rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
                else:
                    max_lag = max(max_lag, -ahead)
                patient, device = devices[i % len(devices)]
                stamp = datetime.now(UTC)  # the publish time, carried as measured_at
                payload = encode_canonical(reading(patient, device, stamp, rng))
                client.publish(topic(device.device_id), payload, qos=1)
        else:
            for name, payload in preloaded:
                client.publish(name, payload, qos=1)
        if mine:
            all_acked.wait(job.timeout)
        return PublishResult(len(mine), acked, time.time() - started, max_lag * 1000)
    finally:
        client.disconnect()
        client.loop_stop()


def prepare_session(login: Login, client_id: str) -> None:
    """Create ``client_id``'s persistent session, subscribed at QoS 1, and leave it offline."""
    subscribed = threading.Event()
    client = _paho(login, client_id, clean_session=False)
    client.on_connect = lambda c, u, flags, reason, p: c.subscribe(TOPIC_FILTER, qos=1)
    client.on_subscribe = lambda c, u, mid, reasons, p: subscribed.set()
    client.connect(login.host, login.port)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise BenchError(f"could not subscribe as {client_id}")
    finally:
        client.disconnect()
        client.loop_stop()


def drop_session(login: Login, client_id: str) -> None:
    """Remove ``client_id``'s persistent session: a clean-session connect discards it."""
    connected = threading.Event()
    client = _paho(login, client_id, clean_session=True)
    client.on_connect = lambda c, u, flags, reason, p: connected.set()
    client.connect(login.host, login.port)
    client.loop_start()
    try:
        connected.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()


# --- helper processes --------------------------------------------------------------------------


def emit(event: str, **fields: object) -> None:
    """What a helper process tells its parent: one JSON object per stdout line."""
    print(json.dumps({"event": event, **fields}), flush=True)


class Child:
    """A helper process that reports events on stdout and stops when its stdin closes.

    Its stderr goes to ``log_path``; failures quote the tail of that log.
    """

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self._log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=dict(env),
        )
        self._events: dict[str, dict[str, Any]] = {}
        self._closed = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # a tool wrapped around the child (py-spy) may print its own lines
            if isinstance(message, dict) and isinstance(message.get("event"), str):
                with self._changed:
                    self._events.setdefault(message["event"], message)
                    self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The child's first ``event`` (even one that came earlier); BenchError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while event not in self._events:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    why = "exited" if self._closed else f"was silent for {timeout:.0f} s"
                    raise BenchError(
                        f"{self.name} {why} before {event!r}\n--- {self._log_path} ---\n"
                        f"{self.log_tail()}"
                    )
                self._changed.wait(remaining)
            return self._events[event]

    def stop(self, timeout: float = 15.0) -> int:
        """Close stdin (the cue to stop) and wait; kill the child when it does not exit."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


# --- CPU and memory, from /proc ---------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from 3 (state) on; comm may hold spaces


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds the living processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return total / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of this machine have spent busy since boot (/proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def _parents() -> dict[int, int]:
    """Every living process's parent: pid -> parent pid (/proc/PID/stat)."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parent_of[int(entry.name)] = int(fields[1])
    return parent_of


def children_of(parent: int) -> list[int]:
    """``parent`` and its direct children (a PostgreSQL postmaster and its backends)."""
    return [parent, *(pid for pid, p in _parents().items() if p == parent)]


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (a consumer and the workers' process it started)."""
    parent_of = _parents()
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parent_of.items() if parent in frontier]
        found.extend(frontier)
    return found


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB, None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def pid_from_file(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(path.read_text().split()[0])
    return None


# --- figures ----------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an ascending sequence; NaN when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(len(ordered) * q / 100))
    return ordered[min(rank, len(ordered)) - 1]


def steady_rate(commits: Sequence[tuple[float, int]], low: float = 0.1, high: float = 0.9) -> float:
    """Messages/s between the commits that passed ``low`` and ``high`` of the total.

    ``commits`` are (wall time, cumulative messages) in order; trimming both ends leaves out
    the start-up ramp and the last partial batches.
    """
    if len(commits) < 3:
        return math.nan
    total = commits[-1][1]
    first = next(c for c in commits if c[1] >= total * low)
    last = next(c for c in commits if c[1] >= total * high)
    if last[0] <= first[0]:
        return math.nan
    return (last[1] - first[1]) / (last[0] - first[0])


def render_table(title: str, rows: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table of (what, value, note) rows under a title."""
    width = max((len(r[0]) for r in rows), default=0)
    value_width = max((len(r[1]) for r in rows), default=0)
    lines = [title, "-" * len(title)]
    for what, value, note in rows:
        line = f"{what:<{width}}  {value:>{value_width}}"
        lines.append(f"{line}  {note}".rstrip())
    return "\n".join(lines)


def fmt_rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}/s"


def fmt_ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.1f} ms"


def run_with_services(
    prefix: str,
    body: Callable[[LocalServices, Path], tuple[str, dict[str, Any]]],
    *,
    keep: bool = False,
    device_cert_port: int | None = None,
    work: Path | None = None,
    timescaledb: bool | None = None,
) -> int:
    """The frame of every benchmark: local services in a new temporary directory, ``body``,
    failures as one line on stderr, then the table and ONE JSON line on stdout; the exit status.

    ``body`` gets the (not yet started) services and the directory; it stops what it starts
    itself. ``keep`` leaves the directory for inspection (the server's log is there).
    ``device_cert_port``: the broker's certificate listener for devices, when one is needed.
    ``work``: a directory of the caller's (kept, to be used again) instead of a new one;
    ``timescaledb``: False for plain PostgreSQL even where the extension is installed."""
    if work is None:
        work = Path(tempfile.mkdtemp(prefix=prefix))
    else:
        keep = True
        work.mkdir(parents=True, exist_ok=True)
    services = LocalServices(
        work / "services",
        device_cert_port=device_cert_port,
        timescaledb=timescaledb,
        log=lambda line: None,
    )
    try:
        table, result = body(services, work)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (BenchError, LocalServicesError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        try:
            services.stop()
        finally:
            if keep:
                print(f"kept {work} (serve.log: the server's log)", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    print(table)
    print(json.dumps(result))
    return 0
