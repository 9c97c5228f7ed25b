"""LocalServices: start, find and stop the cluster and the broker kept in one directory."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from rpm.domain.errors import LocalServicesError
from rpm.local_endpoints import ADMIN_USERNAME, ServiceEndpoints
from simulators.localservices import postgres
from simulators.localservices.accounts import service_account
from simulators.localservices.config import (
    DEVICE_USERNAME,
    GATEWAY_USERNAME,
    LOOPBACK,
    MqttTls,
)
from simulators.localservices.mosquitto import MosquittoBroker, find_mosquitto
from simulators.localservices.postgres import DB_NAME, DB_ROLE, PostgresCluster, find_pg_bindir
from simulators.localservices.processes import free_port, port_free, url_port


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
        device_cert_port: int | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self._root = Path(root).absolute()
        if any(ch in str(self._root) for ch in "\n\r\0"):
            raise LocalServicesError(f"unusable directory name: {self._root!r}")
        self._want_pg_port = pg_port
        self._want_mqtt_port = mqtt_port
        self._want_timescaledb = timescaledb
        # Kept in endpoints.json: a later start without it keeps the listener.
        self._want_device_cert_port = device_cert_port
        self._log = log
        self._pg = PostgresCluster(self._root, log)
        self._broker = MosquittoBroker(self._root, mqtt_tls, log)
        self._endpoints_file = self._root / "endpoints.json"

    # --- public ---

    def start(self) -> ServiceEndpoints:
        """Start both services, or find them running; the same credentials every time."""
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._locked():
            found = self.running()
            if found is not None:
                self._check_matches(found)
                flavour = self._pg.flavour(
                    self._pg.socket_dir(),
                    url_port(found.database_url),
                    timescaledb=found.timescaledb,
                    timescaledb_refused=self._want_timescaledb is False,
                )
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
            for step in (self._broker.stop, self._pg.stop):
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
        postmaster = self._pg.postmaster()
        if postmaster is None or postmaster[1] != url_port(saved.database_url):
            return None
        if self._broker.pid() is None:
            return None
        return saved

    # One service at a time, e.g. to show that the gateway rides out a restart of either.

    def stop_postgres(self) -> None:
        """Stop only the cluster (fast shutdown: sessions end, nothing committed is lost)."""
        with self._locked():
            self._pg.stop()

    def start_postgres(self) -> None:
        """Start the cluster again with its saved settings; a running one is left alone."""
        with self._locked():
            if self._pg.postmaster() is None:
                self._pg.restart(service_account("postgres", required=True))

    def restart_postgres(self, down_s: float = 0.0) -> None:
        """Stop the cluster, stay down ``down_s`` seconds, start it again."""
        self.stop_postgres()
        time.sleep(down_s)
        self.start_postgres()

    def stop_broker(self) -> None:
        """Stop only Mosquitto (SIGTERM: it saves sessions and queued messages first)."""
        with self._locked():
            self._broker.stop()

    def start_broker(self) -> None:
        """Start Mosquitto again on its saved port and config; a running one is left alone."""
        with self._locked():
            saved = self._load_saved()
            if saved is None or not self._broker.configured():
                raise LocalServicesError(
                    f"no broker set up in {self._broker.mqtt_dir}: start() first"
                )
            if self._broker.pid() is None:
                self._broker.start(find_mosquitto()[0], saved.mqtt_port)

    def restart_broker(self, down_s: float = 0.0) -> None:
        """Stop the broker, stay down ``down_s`` seconds, start it again."""
        self.stop_broker()
        time.sleep(down_s)
        self.start_broker()

    # --- start ---

    def _start_locked(self) -> ServiceEndpoints:
        pg_bindir = find_pg_bindir()
        mosquitto, dynsec_plugin = find_mosquitto()
        postgres_user = service_account("postgres", required=True)
        mosquitto_user = service_account("mosquitto", required=False)
        saved = self._load_saved()
        postmaster = self._pg.postmaster()
        mqtt_pid = self._broker.pid()

        if postmaster is not None:
            if saved is None:
                raise LocalServicesError(
                    f"PostgreSQL runs in {self._pg.pg_dir} but {self._endpoints_file} is missing; "
                    "stop it (pg_ctl stop) and start again"
                )
            timescaledb = saved.timescaledb
            if self._want_timescaledb is not None and self._want_timescaledb != timescaledb:
                raise LocalServicesError(
                    f"PostgreSQL in {self._pg.pg_dir} runs with timescaledb={timescaledb}; "
                    "stop() it first"
                )
            pg_port = self._keep_port("PostgreSQL", postmaster[1], self._want_pg_port)
        else:
            timescaledb = self._decide_timescaledb(pg_bindir)
            taken = set() if mqtt_pid is None or saved is None else {saved.mqtt_port}
            previous = None if saved is None else url_port(saved.database_url)
            pg_port = self._pick_port("PostgreSQL", self._want_pg_port, previous, taken)

        if mqtt_pid is not None and saved is not None:
            mqtt_port = self._keep_port("Mosquitto", saved.mqtt_port, self._want_mqtt_port)
        else:
            previous = None if saved is None else saved.mqtt_port
            mqtt_port = self._pick_port("Mosquitto", self._want_mqtt_port, previous, {pg_port})
        device_cert_port = self._device_cert_port(saved, mqtt_pid, {pg_port, mqtt_port})

        pg_password = _password_of(saved.database_url) if saved else secrets.token_urlsafe(24)
        endpoints = ServiceEndpoints(
            database_url=f"postgresql://{DB_ROLE}:{pg_password}@{LOOPBACK}:{pg_port}/{DB_NAME}",
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
            mqtt_device_cert_port=device_cert_port,
        )
        # Saved before initdb, so a start that fails half way leaves credentials that match.
        self._save(endpoints)

        socket_dir = self._pg.socket_dir()
        # A cluster whose endpoints file was lost gets a new password (over the trusted socket).
        new_password = pg_password if saved is None and self._pg.initialised() else None
        started_pg = False
        try:
            if postmaster is None:
                self._pg.prepare(pg_bindir, postgres_user, pg_password, socket_dir)
                self._pg.write_settings(pg_port, socket_dir, timescaledb, postgres_user)
                self._pg.start(pg_bindir, postgres_user)
                started_pg = True
            flavour = self._pg.flavour(
                socket_dir,
                pg_port,
                timescaledb=timescaledb,
                timescaledb_refused=self._want_timescaledb is False,
                create_database=True,
                new_password=new_password,
            )
            if mqtt_pid is None:
                self._broker.prepare(endpoints, dynsec_plugin, mosquitto_user)
                self._broker.start(mosquitto, mqtt_port)
        except BaseException:
            # Leave nothing half-started behind: stop what this call started.
            with contextlib.suppress(LocalServicesError):
                if mqtt_pid is None:
                    self._broker.stop()
                if started_pg:
                    self._pg.stop()
            raise
        self._log_summary("started", endpoints, flavour)
        return endpoints

    def _check_matches(self, found: ServiceEndpoints) -> None:
        wanted = (
            ("PostgreSQL port", self._want_pg_port, url_port(found.database_url)),
            ("Mosquitto port", self._want_mqtt_port, found.mqtt_port),
            ("timescaledb", self._want_timescaledb, found.timescaledb),
            (
                "the certificate listener on port",
                self._want_device_cert_port,
                found.mqtt_device_cert_port,
            ),
        )
        for what, want, have in wanted:
            if want is not None and want != have:
                raise LocalServicesError(
                    f"services in {self._root} already run with {what} {have}, not {want}; "
                    "stop() them first"
                )

    def _device_cert_port(
        self, saved: ServiceEndpoints | None, mqtt_pid: int | None, taken: set[int]
    ) -> int | None:
        """The certificate listener's port: the one asked for, else the saved one (a
        listener once asked for stays, so ``rpm services start`` alone keeps it)."""
        previous = None if saved is None else saved.mqtt_device_cert_port
        wanted = self._want_device_cert_port
        if mqtt_pid is not None and saved is not None:  # the broker runs: its config stays
            if wanted is not None and wanted != previous:
                raise LocalServicesError(
                    f"Mosquitto already runs with the certificate listener on {previous}; "
                    "stop() it first"
                )
            return previous
        if wanted is None:
            return previous
        if wanted != previous and (wanted in taken or not port_free(wanted)):
            raise LocalServicesError(f"Mosquitto: port {wanted} on {LOOPBACK} is in use")
        return wanted

    def _keep_port(self, what: str, running: int, wanted: int | None) -> int:
        if wanted is not None and wanted != running:
            raise LocalServicesError(f"{what} already runs on port {running}; stop() it first")
        return running

    def _pick_port(
        self, what: str, wanted: int | None, previous: int | None, taken: set[int]
    ) -> int:
        if wanted is not None:
            if wanted in taken or not port_free(wanted):
                raise LocalServicesError(f"{what}: port {wanted} on {LOOPBACK} is in use")
            return wanted
        if previous is not None and previous not in taken and port_free(previous):
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
        installed = postgres.timescaledb_installed(pg_bindir)
        if self._want_timescaledb and not installed:
            raise LocalServicesError(
                "TimescaleDB was required but is not installed for PostgreSQL 15 "
                "(no timescaledb.control and timescaledb.so)"
            )
        return installed

    def _log_summary(self, verb: str, endpoints: ServiceEndpoints, flavour: str) -> None:
        self._log(
            f"local services {verb} in {self._root}: {flavour} on "
            f"{LOOPBACK}:{url_port(endpoints.database_url)}, "
            f"Mosquitto on {endpoints.mqtt_host}:{endpoints.mqtt_port}"
        )

    # --- files ---

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
