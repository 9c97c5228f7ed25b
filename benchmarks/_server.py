"""The server side of a benchmark: the logins, the Twilio stand-in's credentials, ``rpm serve``
as a child process, the services' CPU seconds, PostgreSQL's settings, and stopping on SIGTERM
or when the parent closes a helper's stdin."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from _common import (
    BenchError,
    Child,
    Login,
    children_of,
    cpu_seconds,
    machine_busy_seconds,
    pid_from_file,
)

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "bench-auth-token"


def logins(endpoints: Any) -> tuple[Login, Login]:
    """The gateway's and the fleet's broker logins of ``ServiceEndpoints``."""
    e = endpoints
    return (
        Login(e.mqtt_host, e.mqtt_port, e.mqtt_gateway_username, e.mqtt_gateway_password),
        Login(e.mqtt_host, e.mqtt_port, e.mqtt_device_username, e.mqtt_device_password),
    )


class ServicesCpu:
    """CPU seconds of the local services kept in ``root`` and of the whole machine."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def broker_pid(self) -> int | None:
        return pid_from_file(self.root / "mqtt" / "mosquitto.pid")

    def now(self) -> dict[str, float]:
        """CPU seconds so far: the broker, PostgreSQL (postmaster and backends), the machine."""
        broker = self.broker_pid()
        postmaster = pid_from_file(self.root / "pg" / "postmaster.pid")
        return {
            "broker": cpu_seconds([broker] if broker else []),
            "postgres": cpu_seconds(children_of(postmaster) if postmaster else []),
            "machine": machine_busy_seconds(),
        }


def cpu_used(
    before: Mapping[str, float], after: Mapping[str, float], extra: float = 0.0
) -> dict[str, float]:
    """CPU seconds between two samples, each part; ``others``: the machine's busy time minus
    every part and ``extra`` (other people's work on a shared machine: the noise)."""
    used = {k: after[k] - before[k] for k in before if k != "machine"}
    used["others"] = after["machine"] - before["machine"] - sum(used.values()) - extra
    return used


async def postgres_info(conn: Any) -> dict[str, str]:
    """The server's version, TimescaleDB (``off`` or ``on (version)``) and durability."""
    tsdb = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    return {
        "postgres": str(await conn.fetchval("SHOW server_version")),
        "timescaledb": f"on ({tsdb})" if tsdb else "off",
        "durability": f"fsync={await conn.fetchval('SHOW fsync')}, synchronous_commit="
        f"{await conn.fetchval('SHOW synchronous_commit')}",
    }


def program_version(program: str) -> str:
    """The first line of ``program -h`` (sbin included), or ``not found``."""
    path = shutil.which(program, path=f"/usr/sbin:/usr/local/sbin:{os.environ.get('PATH', '')}")
    if path is None:
        return "not found"
    result = subprocess.run([path, "-h"], capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).splitlines()[0].strip()


async def stdin_closed() -> None:
    """Return when the parent closes our stdin: its cue to stop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        pass


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM stops the benchmark as Ctrl-C does (the services are stopped and removed)."""
    signal.signal(signal.SIGTERM, _interrupt)


class RpmServe:
    """``rpm serve`` in its own process, configured by ``env``; its log in ``log``."""

    def __init__(
        self, env: Mapping[str, str], log: Path, base_url: str, roles: str | None = None
    ) -> None:
        """``roles``: ``rpm serve --role`` (all of them when None)."""
        self.env, self.log, self.base_url, self.roles = env, log, base_url, roles
        self.child: Child | None = None

    async def start(self, *, wait: bool = True) -> None:
        """Start it; ready when its API answers (``wait``; a process without the API role
        is started and left to come up)."""
        script = Path(sys.executable).with_name("rpm")  # the console script: `rpm serve`
        command = [str(script)] if script.exists() else [sys.executable, "-m", "rpm.cli"]
        command += ["serve", *(["--role", self.roles] if self.roles else [])]
        name = f"rpm serve {self.roles or ''}".strip()
        self.child = child = Child(name, command, self.env, self.log)
        if not wait:
            return
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                if child.proc.poll() is not None:
                    raise BenchError(f"rpm serve exited\n{child.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"{self.base_url}/api/alerts?limit=1")
                    if r.status_code < 500:
                        return
                if time.monotonic() > deadline:
                    raise BenchError(f"rpm serve not up in 60 s\n{child.log_tail()}")
                await asyncio.sleep(0.2)

    def check_running(self) -> None:
        """Raise ``BenchError`` with its log's tail if the process has exited."""
        if self.child is None or self.child.proc.poll() is not None:
            tail = self.child.log_tail() if self.child else ""
            raise BenchError(f"{self.child.name if self.child else 'rpm serve'} exited\n{tail}")

    @property
    def pid(self) -> int | None:
        return self.child.proc.pid if self.child else None

    def stop(self) -> None:
        if self.child is not None and self.child.proc.poll() is None:
            self.child.proc.send_signal(signal.SIGTERM)  # rpm serve stops cleanly on it
            self.child.stop(timeout=20)

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()
