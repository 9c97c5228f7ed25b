"""A project-local PostgreSQL 15 cluster and Mosquitto broker, loopback only.

Everything lives under one directory ``root``::

    endpoints.json       the saved ServiceEndpoints, mode 0600 (it holds the passwords)
    .lock                serialises start() and stop() between processes
    pg/                  the cluster (PGDATA), also its unix socket directory
    pg/rpm.conf          our settings, rewritten on every start, included from postgresql.conf
    pg.log               the server log (pg_ctl -l)
    mqtt/                mosquitto.conf (rewritten on every start), passwd, acl, mosquitto.log,
                         mosquitto.pid and data/ (persistence)

Running as root: initdb, pg_ctl and postgres refuse root, so they run as the ``postgres``
user through ``runuser``; Mosquitto 2 started as root reads its files and binds, then drops to
the ``mosquitto`` user, which must still write data/ and remove its pid file. So ``pg/`` and
``pg.log`` are owned by postgres, ``mqtt/`` and its files by mosquitto, and each directory
above ``root`` that one of these users cannot search gets ``o+x`` (search only: nobody gains
the right to list it). That is the minimum; pytest's ``/tmp/pytest-of-root`` (0700) is the
usual case. Nothing else changes owner or mode.

Secrets never appear on a command line or in a log: initdb reads a password file, Mosquitto's
passwords are hashed in place by ``mosquitto_passwd -U``, and ``repr`` of ServiceEndpoints
hides them. The cluster trusts local socket logins (``--auth-local=trust``); its socket lives
in a 0700 directory, so only its owner (and root) can use that.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from device_gateways import dynsec
from rpm.domain.errors import LocalServicesError
from rpm.local_endpoints import ADMIN_USERNAME, ServiceEndpoints

LOOPBACK = "127.0.0.1"
GATEWAY_USERNAME = "rpm-gateway"
DEVICE_USERNAME = "rpm-fleet"
_DB_NAME = "rpm"
_DB_ROLE = "rpm"
_PG_MAJOR = "15"
_PG_BINDIR = Path("/usr/lib/postgresql/15/bin")  # Debian/Ubuntu layout
_TSDB_CONTROL = Path("/usr/share/postgresql/15/extension/timescaledb.control")
_MQTT_BINDIRS = ("/usr/sbin", "/usr/local/sbin")  # mosquitto is in sbin, often off a user's PATH
_WAIT_S = 10.0  # for the broker to listen, and for a process to exit
_PG_WAIT_S = 60  # pg_ctl -t: crash recovery on start may take a while
_MAX_SOCKET_DIR = 90  # sun_path holds 107 bytes; "/.s.PGSQL.65535.lock" needs 20 of them


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def pick_port(wanted: int) -> int:
    """``wanted`` when free on loopback, else any free port."""
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, wanted))
        except OSError:
            return free_port()
    return wanted


# --- pure helpers: text in, text out --------------------------------------------------------


def _url_port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None  # checked by ServiceEndpoints
    return port


def _pg_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def render_pg_settings(port: int, socket_dir: Path, timescaledb: bool) -> str:
    """The cluster settings we own; postgresql.conf includes them last, so they win."""
    lines = [
        "# Written by simulators.localservices on every start; edits here are lost.",
        f"listen_addresses = {_pg_quote(LOOPBACK)}",
        f"port = {port}",
        f"unix_socket_directories = {_pg_quote(str(socket_dir))}",
        "unix_socket_permissions = 0700",
        "max_connections = 100",
        "shared_buffers = '256MB'",
        # We promise that an acknowledged reading survives a crash: keep every durability knob on.
        "fsync = on",
        "synchronous_commit = on",
        "full_page_writes = on",
        "timezone = 'UTC'",
        "log_timezone = 'UTC'",
        "log_line_prefix = '%m [%p] %q%u@%d '",
    ]
    if timescaledb:
        lines += [
            "shared_preload_libraries = 'timescaledb'",
            "timescaledb.telemetry_level = off",
            # Background jobs (compression, retention) and parallel workers share this pool.
            "timescaledb.max_background_workers = 8",
            "max_worker_processes = 16",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class MqttTls:
    """A second, TLS listener: its port and the PEM files of its CA, certificate and key."""

    port: int
    cafile: Path
    certfile: Path
    keyfile: Path


def render_mosquitto_conf(
    port: int, mqtt_dir: Path, plugin: str = "", tls: MqttTls | None = None
) -> str:
    """mosquitto.conf: authenticated loopback listener(s) with durable sessions.

    Logins and ACLs come from the dynamic-security plugin (``dynamic-security.json``),
    so the server can provision per-device logins while the broker runs.
    """
    tls_listener = ""
    if tls is not None:
        tls_listener = (
            f"listener {tls.port} {LOOPBACK}\n"
            f"cafile {tls.cafile}\ncertfile {tls.certfile}\nkeyfile {tls.keyfile}\n"
            "tls_version tlsv1.2\n"
        )
    return f"""\
# Written by simulators.localservices on every start; edits here are lost.
per_listener_settings false
listener {port} {LOOPBACK}
{tls_listener}allow_anonymous false
plugin {plugin}
plugin_opt_config_file {mqtt_dir / "dynamic-security.json"}
# Durable sessions: queued QoS 1 messages outlive a broker restart. Mosquitto 2.0 saves its
# whole in-memory state each time, so a 1 s interval costs more as a backlog grows; a clean
# stop (SIGTERM) always saves.
persistence true
persistence_location {mqtt_dir / "data"}/
autosave_interval 1
autosave_on_changes false
# A persistent session must not drop readings while the gateway is down.
max_inflight_messages 10000
max_queued_messages 1000000
max_queued_bytes 0
max_packet_size 1048576
set_tcp_nodelay true
log_dest file {mqtt_dir / "mosquitto.log"}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
pid_file {mqtt_dir / "mosquitto.pid"}
"""


def parse_postmaster_pid(text: str) -> tuple[int, int, str] | None:
    """(pid, port, status) from a postmaster.pid file; None when it is incomplete."""
    lines = text.splitlines()
    # Lines: pid, datadir, start time, port, socket dir, listen address, shmem key, status.
    if len(lines) < 8 or not lines[0].strip().isdigit() or not lines[3].strip().isdigit():
        return None
    return int(lines[0]), int(lines[3]), lines[7].strip()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


# --- processes, ports and accounts ----------------------------------------------------------


def _pid_alive(pid: int) -> bool:
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


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _port_free(port: int) -> bool:
    # SO_REUSEADDR like the servers themselves, so TIME_WAIT leftovers do not count as busy.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@dataclass(frozen=True, slots=True)
class _Account:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def _account(name: str) -> _Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    groups = frozenset(os.getgrouplist(name, entry.pw_gid))
    return _Account(name, entry.pw_uid, entry.pw_gid, groups)


def _can_search(st: os.stat_result, who: _Account) -> bool:
    if st.st_uid == who.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in who.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _clean_env() -> dict[str, str]:
    # PGHOST, PGPORT, PGDATA... from the caller's shell must not redirect our commands.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _find_pg_bindir() -> Path:
    if (_PG_BINDIR / "initdb").exists():
        return _PG_BINDIR
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run(  # noqa: S603 - the pg_config on PATH, fixed arguments
            [pg_config, "--version", "--bindir"], capture_output=True, text=True, check=False
        ).stdout.split("\n")
        if len(out) >= 2 and out[0].startswith(f"PostgreSQL {_PG_MAJOR}."):
            bindir = Path(out[1].strip())
            if (bindir / "initdb").exists():
                return bindir
    raise LocalServicesError(
        "PostgreSQL 15 server binaries not found; run scripts/install-system-deps.sh"
    )


def _find_mosquitto() -> tuple[str, str]:
    """The broker binary and its dynamic-security plugin."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_MQTT_BINDIRS])
    broker = shutil.which("mosquitto", path=path)
    plugins = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so")) + sorted(
        Path("/usr/lib").glob("mosquitto_dynamic_security.so")
    )
    if broker is None or not plugins:
        raise LocalServicesError("mosquitto not found; run scripts/install-system-deps.sh")
    return broker, str(plugins[0])


# --- the services ---------------------------------------------------------------------------


class LocalServices:
    """Start, find and stop the local PostgreSQL cluster and Mosquitto broker kept in ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        pg_port: int | None = None,
        mqtt_port: int | None = None,
        timescaledb: bool | None = None,
        mqtt_tls: MqttTls | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self._root = Path(root).absolute()
        if any(ch in str(self._root) for ch in "\n\r\0"):
            raise LocalServicesError(f"unusable directory name: {self._root!r}")
        self._want_pg_port = pg_port
        self._want_mqtt_port = mqtt_port
        self._want_timescaledb = timescaledb
        self._tls = mqtt_tls
        self._log = log
        self._pg_dir = self._root / "pg"
        self._pg_log = self._root / "pg.log"
        self._mqtt_dir = self._root / "mqtt"
        self._endpoints_file = self._root / "endpoints.json"
        self._as_root = os.geteuid() == 0

    # --- public ---

    def start(self) -> ServiceEndpoints:
        """Start both services, or find them running; the same credentials every time."""
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._locked():
            found = self.running()
            if found is not None:
                self._check_matches(found)
                flavour = self._flavour(found, self._pg_socket_dir(), _url_port(found.database_url))
                self._log_summary("reused", found, flavour)
                return found
            # A free port can be taken by another process between our probe and the
            # server's bind; then pick again (only for ports we chose ourselves).
            for attempt in range(3):
                try:
                    return self._start_locked()
                except LocalServicesError as exc:
                    chosen = self._want_pg_port is None and self._want_mqtt_port is None
                    if attempt == 2 or not chosen or "Address already in use" not in str(exc):
                        raise
                    self._log("a port was taken while starting; trying other ports")
            raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the broker (SIGTERM) and the cluster (fast shutdown); nothing running is fine."""
        if not self._root.is_dir():
            return
        with self._locked():
            errors = []
            for step in (self._stop_mosquitto, self._stop_postgres):
                try:
                    step()
                except LocalServicesError as exc:
                    errors.append(str(exc))
            if errors:
                raise LocalServicesError("\n".join(errors))

    def running(self) -> ServiceEndpoints | None:
        """The saved endpoints when both services are up on them, else None."""
        saved = self._load_saved()
        if saved is None:
            return None
        postmaster = self._postmaster()
        if postmaster is None or postmaster[1] != _url_port(saved.database_url):
            return None
        if self._mosquitto_pid() is None:
            return None
        return saved

    # One service at a time, e.g. to show that the gateway rides out a restart of either.

    def stop_postgres(self) -> None:
        """Stop only the cluster (fast shutdown: sessions end, nothing committed is lost)."""
        with self._locked():
            self._stop_postgres()

    def start_postgres(self) -> None:
        """Start the cluster again with its saved settings; a running one is left alone."""
        with self._locked():
            if self._postmaster() is not None:
                return
            if not self._initialised():
                raise LocalServicesError(f"no PostgreSQL cluster in {self._pg_dir}: start() first")
            user = self._service_account("postgres", required=True)
            socket_dir = self._pg_socket_dir()
            if socket_dir != self._pg_dir:  # _stop_postgres removed it
                self._make_private_dir(socket_dir, user)
            self._start_postgres(_find_pg_bindir(), user)

    def restart_postgres(self, down_s: float = 0.0) -> None:
        """Stop the cluster, stay down ``down_s`` seconds, start it again."""
        self.stop_postgres()
        time.sleep(down_s)
        self.start_postgres()

    def stop_broker(self) -> None:
        """Stop only Mosquitto (SIGTERM: it saves sessions and queued messages first)."""
        with self._locked():
            self._stop_mosquitto()

    def start_broker(self) -> None:
        """Start Mosquitto again on its saved port and config; a running one is left alone."""
        with self._locked():
            saved = self._load_saved()
            if saved is None or not (self._mqtt_dir / "mosquitto.conf").exists():
                raise LocalServicesError(f"no broker set up in {self._mqtt_dir}: start() first")
            if self._mosquitto_pid() is None:
                self._start_mosquitto(_find_mosquitto()[0], saved.mqtt_port)

    def restart_broker(self, down_s: float = 0.0) -> None:
        """Stop the broker, stay down ``down_s`` seconds, start it again."""
        self.stop_broker()
        time.sleep(down_s)
        self.start_broker()

    # --- start ---

    def _start_locked(self) -> ServiceEndpoints:
        pg_bindir = _find_pg_bindir()
        mosquitto, dynsec_plugin = _find_mosquitto()
        postgres_user = self._service_account("postgres", required=True)
        mosquitto_user = self._service_account("mosquitto", required=False)
        saved = self._load_saved()
        postmaster = self._postmaster()
        mqtt_pid = self._mosquitto_pid()

        if postmaster is not None:
            if saved is None:
                raise LocalServicesError(
                    f"PostgreSQL runs in {self._pg_dir} but {self._endpoints_file} is missing; "
                    "stop it (pg_ctl stop) and start again"
                )
            timescaledb = saved.timescaledb
            if self._want_timescaledb is not None and self._want_timescaledb != timescaledb:
                raise LocalServicesError(
                    f"PostgreSQL in {self._pg_dir} runs with timescaledb={timescaledb}; "
                    "stop() it first"
                )
            pg_port = self._keep_port("PostgreSQL", postmaster[1], self._want_pg_port)
        else:
            timescaledb = self._decide_timescaledb(pg_bindir)
            taken = set() if mqtt_pid is None or saved is None else {saved.mqtt_port}
            previous = None if saved is None else _url_port(saved.database_url)
            pg_port = self._pick_port("PostgreSQL", self._want_pg_port, previous, taken)

        if mqtt_pid is not None and saved is not None:
            mqtt_port = self._keep_port("Mosquitto", saved.mqtt_port, self._want_mqtt_port)
        else:
            previous = None if saved is None else saved.mqtt_port
            mqtt_port = self._pick_port("Mosquitto", self._want_mqtt_port, previous, {pg_port})

        pg_password = _password_of(saved.database_url) if saved else secrets.token_urlsafe(24)
        endpoints = ServiceEndpoints(
            database_url=f"postgresql://{_DB_ROLE}:{pg_password}@{LOOPBACK}:{pg_port}/{_DB_NAME}",
            mqtt_host=LOOPBACK,
            mqtt_port=mqtt_port,
            mqtt_gateway_username=GATEWAY_USERNAME,
            mqtt_gateway_password=saved.mqtt_gateway_password
            if saved
            else secrets.token_urlsafe(24),
            mqtt_device_username=DEVICE_USERNAME,
            mqtt_device_password=saved.mqtt_device_password if saved else secrets.token_urlsafe(24),
            mqtt_admin_username=ADMIN_USERNAME,
            mqtt_admin_password=saved.mqtt_admin_password if saved else secrets.token_urlsafe(24),
            timescaledb=timescaledb,
            root=str(self._root),
        )
        # Saved before initdb, so a start that fails half way leaves credentials that match.
        self._save(endpoints)

        socket_dir = self._pg_socket_dir()
        # A cluster whose endpoints file was lost gets a new password (over the trusted socket).
        new_password = pg_password if saved is None and self._initialised() else None
        started_pg = False
        try:
            if postmaster is None:
                self._prepare_postgres(pg_bindir, postgres_user, pg_password, socket_dir)
                self._write_pg_settings(pg_port, socket_dir, timescaledb, postgres_user)
                self._start_postgres(pg_bindir, postgres_user)
                started_pg = True
            flavour = self._flavour(
                endpoints, socket_dir, pg_port, create_database=True, new_password=new_password
            )
            if mqtt_pid is None:
                self._prepare_mosquitto(endpoints, dynsec_plugin, mosquitto_user)
                self._start_mosquitto(mosquitto, mqtt_port)
        except BaseException:
            # Leave nothing half-started behind: stop what this call started.
            with contextlib.suppress(LocalServicesError):
                if mqtt_pid is None:
                    self._stop_mosquitto()
                if started_pg:
                    self._stop_postgres()
            raise
        self._log_summary("started", endpoints, flavour)
        return endpoints

    def _check_matches(self, found: ServiceEndpoints) -> None:
        wanted = (
            ("PostgreSQL port", self._want_pg_port, _url_port(found.database_url)),
            ("Mosquitto port", self._want_mqtt_port, found.mqtt_port),
            ("timescaledb", self._want_timescaledb, found.timescaledb),
        )
        for what, want, have in wanted:
            if want is not None and want != have:
                raise LocalServicesError(
                    f"services in {self._root} already run with {what} {have}, not {want}; "
                    "stop() them first"
                )

    def _keep_port(self, what: str, running: int, wanted: int | None) -> int:
        if wanted is not None and wanted != running:
            raise LocalServicesError(f"{what} already runs on port {running}; stop() it first")
        return running

    def _pick_port(
        self, what: str, wanted: int | None, previous: int | None, taken: set[int]
    ) -> int:
        if wanted is not None:
            if wanted in taken or not _port_free(wanted):
                raise LocalServicesError(f"{what}: port {wanted} on {LOOPBACK} is in use")
            return wanted
        if previous is not None and previous not in taken and _port_free(previous):
            return previous
        port = free_port()
        while port in taken:
            port = free_port()
        if previous is not None:
            self._log(f"{what}: port {previous} is in use, moving to {port}")
        return port

    def _decide_timescaledb(self, pg_bindir: Path) -> bool:
        if self._want_timescaledb is False:
            return False
        installed = _timescaledb_installed(pg_bindir)
        if self._want_timescaledb and not installed:
            raise LocalServicesError(
                "TimescaleDB was required but is not installed for PostgreSQL 15 "
                "(no timescaledb.control and timescaledb.so)"
            )
        return installed

    def _flavour(
        self,
        endpoints: ServiceEndpoints,
        socket_dir: Path,
        port: int,
        *,
        create_database: bool = False,
        new_password: str | None = None,
    ) -> str:
        """Ensure the rpm database (and password); describe the server for the log."""
        script = ""
        if new_password is not None:  # on stdin, never in argv; token_urlsafe has no quotes
            script += f"ALTER ROLE {_DB_ROLE} PASSWORD '{new_password}';\n"
        if create_database:
            script += (
                "SELECT 'CREATE DATABASE rpm' WHERE NOT EXISTS "
                "(SELECT FROM pg_database WHERE datname = 'rpm')\\gexec\n"
            )
        script += (
            "SELECT coalesce((SELECT default_version FROM pg_available_extensions"
            " WHERE name = 'timescaledb'), '');\n"
        )
        version = self._psql(socket_dir, port, script).strip()
        if endpoints.timescaledb:
            return f"PostgreSQL 15 with TimescaleDB {version or 'of unknown version'}"
        if version and self._want_timescaledb is False:
            return "plain PostgreSQL 15 (TimescaleDB disabled on request)"
        return "plain PostgreSQL 15 (TimescaleDB extension not installed)"

    def _log_summary(self, verb: str, endpoints: ServiceEndpoints, flavour: str) -> None:
        self._log(
            f"local services {verb} in {self._root}: {flavour} on "
            f"{LOOPBACK}:{_url_port(endpoints.database_url)}, "
            f"Mosquitto on {endpoints.mqtt_host}:{endpoints.mqtt_port}"
        )

    # --- PostgreSQL ---

    def _initialised(self) -> bool:
        return (self._pg_dir / "PG_VERSION").exists()

    def _pg_socket_dir(self) -> Path:
        if len(str(self._pg_dir)) <= _MAX_SOCKET_DIR:
            return self._pg_dir
        # Too long for a unix socket path: a short directory named after the root, so it is
        # found again without being recorded anywhere.
        digest = hashlib.sha256(str(self._pg_dir).encode()).hexdigest()[:16]
        return Path("/tmp") / f"rpm-pg-{digest}"  # noqa: S108 - created 0700 and owner-checked

    def _prepare_postgres(
        self, bindir: Path, user: _Account | None, password: str, socket_dir: Path
    ) -> None:
        if user is not None:
            self._grant_search(self._root, user)
        if not self._pg_log.exists():
            self._pg_log.touch(mode=0o600)
        self._chown(self._pg_log, user)
        if socket_dir != self._pg_dir:
            self._make_private_dir(socket_dir, user)
        if self._initialised():
            return
        if self._pg_dir.exists() and any(self._pg_dir.iterdir()):
            raise LocalServicesError(f"{self._pg_dir} is neither empty nor a PostgreSQL cluster")
        self._pg_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self._pg_dir, user)
        pwfile = self._root / ".pg-password"
        pwfile.unlink(missing_ok=True)
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(password + "\n")
            self._chown(pwfile, user)
            base = [
                str(bindir / "initdb"),
                f"--pgdata={self._pg_dir}",
                f"--username={_DB_ROLE}",
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--data-checksums",  # torn or corrupted pages are reported, not read silently
            ]
            result = self._run([*base, "--locale=C.UTF-8"], user)
            if result.returncode != 0 and "locale" in result.stderr.lower():
                result = self._run([*base, "--no-locale"], user)
            if result.returncode != 0:
                raise LocalServicesError(f"initdb failed:\n{result.stderr.strip()}")
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self._pg_dir / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\n# simulators.localservices\ninclude = 'rpm.conf'\n")
        self._log(f"initialised a PostgreSQL 15 cluster in {self._pg_dir}")

    def _write_pg_settings(
        self, port: int, socket_dir: Path, timescaledb: bool, user: _Account | None
    ) -> None:
        target = self._pg_dir / "rpm.conf"
        target.write_text(render_pg_settings(port, socket_dir, timescaledb))
        self._chown(target, user)

    def _start_postgres(self, bindir: Path, user: _Account | None) -> None:
        argv = [
            str(bindir / "pg_ctl"),
            f"--pgdata={self._pg_dir}",
            f"--log={self._pg_log}",
            f"--timeout={_PG_WAIT_S}",
            "--wait",
            "--silent",
            "start",
        ]
        result = self._run(argv, user, timeout=_PG_WAIT_S + 10)
        if result.returncode != 0 or self._postmaster() is None:
            raise LocalServicesError(
                f"PostgreSQL did not start: {result.stderr.strip()}\n"
                f"--- {self._pg_log} ---\n{_tail(self._pg_log)}"
            )

    def _postmaster(self) -> tuple[int, int] | None:
        """(pid, port) of the cluster's postmaster when it is up and ready."""
        try:
            parsed = parse_postmaster_pid((self._pg_dir / "postmaster.pid").read_text())
        except OSError:
            return None
        if parsed is None:
            return None
        pid, port, status = parsed
        if status != "ready" or not _pid_alive(pid):
            return None
        return pid, port

    def _stop_postgres(self) -> None:
        try:
            parsed = parse_postmaster_pid((self._pg_dir / "postmaster.pid").read_text())
        except OSError:
            parsed = None
        if parsed is not None and _pid_alive(parsed[0]):
            user = self._service_account("postgres", required=True)
            argv = [
                str(_find_pg_bindir() / "pg_ctl"),
                f"--pgdata={self._pg_dir}",
                "--mode=fast",
                f"--timeout={_PG_WAIT_S}",
                "--wait",
                "--silent",
                "stop",
            ]
            result = self._run(argv, user, timeout=_PG_WAIT_S + 10)
            if result.returncode != 0 and _pid_alive(parsed[0]):
                raise LocalServicesError(
                    f"PostgreSQL did not stop: {result.stderr.strip()}\n"
                    f"--- {self._pg_log} ---\n{_tail(self._pg_log)}"
                )
        socket_dir = self._pg_socket_dir()
        if socket_dir != self._pg_dir:
            with contextlib.suppress(OSError):
                socket_dir.rmdir()

    def _psql(self, socket_dir: Path, port: int, script: str) -> str:
        argv = [
            str(_find_pg_bindir() / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--no-align",
            "--tuples-only",
            "--set=ON_ERROR_STOP=1",
            f"--host={socket_dir}",
            f"--port={port}",
            f"--username={_DB_ROLE}",
            "--dbname=postgres",
        ]
        result = self._run(argv, None, stdin=script)  # as root too: root may use the socket
        if result.returncode != 0:
            raise LocalServicesError(
                f"psql failed: {result.stderr.strip()}\n"
                f"--- {self._pg_log} ---\n{_tail(self._pg_log)}"
            )
        return result.stdout

    # --- Mosquitto ---

    def _prepare_mosquitto(
        self, endpoints: ServiceEndpoints, plugin: str, user: _Account | None
    ) -> None:
        if user is not None:
            self._grant_search(self._root, user)
        data = self._mqtt_dir / "data"
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._mqtt_dir.chmod(0o700)
        (self._mqtt_dir / "mosquitto.conf").write_text(
            render_mosquitto_conf(endpoints.mqtt_port, self._mqtt_dir, plugin, self._tls)
        )
        # The broker owns this file once it exists: it holds the device logins provisioned
        # since. Written once, with hashed passwords only.
        security = self._mqtt_dir / "dynamic-security.json"
        if not security.exists():
            document = dynsec.initial_config(
                {
                    dynsec.ADMIN_ROLE: (
                        endpoints.mqtt_admin_username,
                        endpoints.mqtt_admin_password,
                    ),
                    dynsec.GATEWAY_ROLE: (
                        endpoints.mqtt_gateway_username,
                        endpoints.mqtt_gateway_password,
                    ),
                    dynsec.FLEET_ROLE: (
                        endpoints.mqtt_device_username,
                        endpoints.mqtt_device_password,
                    ),
                }
            )
            fd = os.open(security, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle, indent=2)
        (self._mqtt_dir / "mosquitto.pid").unlink(missing_ok=True)
        if user is not None:
            for path in [self._mqtt_dir, *self._mqtt_dir.rglob("*")]:
                self._chown(path, user)

    def _start_mosquitto(self, broker: str, port: int) -> None:
        conf = self._mqtt_dir / "mosquitto.conf"
        log_file = self._mqtt_dir / "mosquitto.log"
        # -d: the broker forks, calls setsid() and is nobody's child here, so no Popen lingers.
        result = self._run([broker, "-c", str(conf), "-d"], None)
        if result.returncode != 0:
            raise LocalServicesError(
                f"Mosquitto did not start: {result.stderr.strip()}\n"
                f"--- {log_file} ---\n{_tail(log_file)}"
            )

        def up() -> bool:
            pid = self._mosquitto_pid()
            if pid is None and (self._mqtt_dir / "mosquitto.pid").exists():
                raise LocalServicesError(f"Mosquitto exited\n--- {log_file} ---\n{_tail(log_file)}")
            return pid is not None and _accepts(port)

        if not _wait_until(up, _WAIT_S):
            raise LocalServicesError(
                f"Mosquitto did not listen on {LOOPBACK}:{port} within {_WAIT_S:.0f} s\n"
                f"--- {log_file} ---\n{_tail(log_file)}"
            )

    def _mosquitto_pid(self) -> int | None:
        """The pid of the broker running our config, from its pid file or else /proc."""
        conf = str(self._mqtt_dir / "mosquitto.conf")

        def ours(pid: int) -> bool:
            return conf in _cmdline(pid) and _pid_alive(pid)

        with contextlib.suppress(OSError, ValueError):
            pid = int((self._mqtt_dir / "mosquitto.pid").read_text().strip())
            if ours(pid):
                return pid
        with contextlib.suppress(OSError):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and ours(int(entry.name)):
                    return int(entry.name)
        return None

    def _stop_mosquitto(self) -> None:
        pid = self._mosquitto_pid()
        if pid is not None:
            # SIGTERM saves the persistence file and exits; SIGKILL only as a last resort.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if _wait_until(lambda: not _pid_alive(pid), _WAIT_S):
                    break
            else:
                raise LocalServicesError(f"Mosquitto (pid {pid}) did not exit")
        (self._mqtt_dir / "mosquitto.pid").unlink(missing_ok=True)

    # --- files, accounts and subprocesses ---

    def _service_account(self, name: str, *, required: bool) -> _Account | None:
        """The account a server must run as when we are root; None when not root."""
        if not self._as_root:
            return None
        account = _account(name)
        if account is None and required:
            raise LocalServicesError(
                f"running as root needs the {name!r} system user (install the package, "
                "or run as an ordinary user)"
            )
        return account

    def _grant_search(self, path: Path, who: _Account) -> None:
        """Add o+x to each directory from ``path`` up that ``who`` cannot search."""
        for directory in [path, *path.parents]:
            st = directory.stat()
            if not _can_search(st, who):
                directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
                self._log(f"made {directory} searchable (o+x) for the {who.name} user")

    def _make_private_dir(self, path: Path, owner: _Account | None) -> None:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        uid = os.geteuid() if owner is None else owner.uid
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (uid, os.geteuid()):
            raise LocalServicesError(f"{path} exists and is not ours; remove it")
        self._chown(path, owner)
        path.chmod(0o700)

    @staticmethod
    def _chown(path: Path, owner: _Account | None) -> None:
        if owner is not None:
            os.chown(path, owner.uid, owner.gid, follow_symlinks=False)

    def _run(
        self,
        argv: list[str],
        user: _Account | None,
        *,
        stdin: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (as ``user`` via runuser when given); never with a secret in argv."""
        if user is not None:
            argv = ["runuser", "-u", user.name, "--", *argv]
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

    def _load_saved(self) -> ServiceEndpoints | None:
        try:
            return ServiceEndpoints.from_json(self._endpoints_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LocalServicesError(f"{self._endpoints_file} is unreadable: {exc}") from exc

    def _save(self, endpoints: ServiceEndpoints) -> None:
        temporary = self._endpoints_file.with_suffix(".json.new")
        temporary.unlink(missing_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(endpoints.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self._endpoints_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self._root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _password_of(url: str) -> str:
    password = urlsplit(url).password
    if password is None:
        raise LocalServicesError("saved database_url has no password")
    return password


def _timescaledb_installed(pg_bindir: Path) -> bool:
    """True when PostgreSQL 15 has both the extension's control file and its library."""
    controls = {_TSDB_CONTROL}
    libdir = Path("/usr/lib/postgresql/15/lib")
    pg_config = pg_bindir / "pg_config"
    if pg_config.exists():
        out = subprocess.run(  # noqa: S603 - fixed program
            [str(pg_config), "--sharedir", "--pkglibdir"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split("\n")
        if len(out) >= 2 and out[0] and out[1]:
            controls.add(Path(out[0].strip()) / "extension" / "timescaledb.control")
            libdir = Path(out[1].strip())
    return any(p.exists() for p in controls) and (libdir / "timescaledb.so").exists()
