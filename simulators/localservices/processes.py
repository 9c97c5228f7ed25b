"""Ports, processes and commands on this machine: what the services run on and are run by."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from rpm.domain.errors import LocalServicesError
from simulators.localservices.config import LOOPBACK

WAIT_S = 10.0  # for the broker to listen, and for a process to exit


# Ports handed out by free_port in this process: never handed out twice.
_handed_out: set[int] = set()
_pick = random.SystemRandom()  # which free port is used changes no outcome


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server started a moment
    later. Picked below the kernel's ephemeral range: a port from that range (the kernel's own
    pick) can be taken in the meantime as the source port of an outgoing connection (seen as
    "address already in use" when the server binds)."""
    high = min(_ephemeral_low(), 65536) - 1
    low = max(1024, high - 12_000)
    for _ in range(500):
        port = _pick.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the kernel's pick
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux: 32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def pick_port(wanted: int) -> int:
    """``wanted`` when free on loopback, else any free port."""
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, wanted))
        except OSError:
            return free_port()
    return wanted


def url_port(url: str) -> int:
    """The port of a URL that ServiceEndpoints has checked."""
    port = urlsplit(url).port
    assert port is not None  # checked by ServiceEndpoints
    return port


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` of a log file, or why there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (PID 1 may never reap ours)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def port_free(port: int) -> bool:
    # SO_REUSEADDR like the servers themselves, so TIME_WAIT leftovers do not count as busy.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def run(
    argv: list[str],
    user: str | None,
    *,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run a command (as ``user`` via runuser when given); never with a secret in argv."""
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    try:
        return subprocess.run(  # noqa: S603 - fixed programs, no shell
            argv,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd="/",  # the service users may not be able to enter ours
            env=_clean_env(),
            timeout=timeout,
            start_new_session=True,  # a Ctrl-C meant for us does not reach the servers
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalServicesError(f"{Path(argv[0]).name} failed: {exc}") from exc


def _clean_env() -> dict[str, str]:
    # PGHOST, PGPORT, PGDATA... from the caller's shell must not redirect our commands.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
