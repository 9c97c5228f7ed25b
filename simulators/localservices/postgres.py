"""The PostgreSQL 15 cluster in ``root/pg``: initdb, pg_ctl start and stop, psql."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from rpm.domain.errors import LocalServicesError
from simulators.localservices.accounts import (
    Account,
    chown,
    grant_search,
    make_private_dir,
    name_of,
    service_account,
)
from simulators.localservices.config import parse_postmaster_pid, render_pg_settings
from simulators.localservices.processes import pid_alive, run, tail

DB_NAME = "rpm"
DB_ROLE = "rpm"
_PG_MAJOR = "15"
_PG_BINDIR = Path("/usr/lib/postgresql/15/bin")  # Debian/Ubuntu layout
_TSDB_CONTROL = Path("/usr/share/postgresql/15/extension/timescaledb.control")
_PG_WAIT_S = 60  # pg_ctl -t: crash recovery on start may take a while
_MAX_SOCKET_DIR = 90  # sun_path holds 107 bytes; "/.s.PGSQL.65535.lock" needs 20 of them


def find_pg_bindir() -> Path:
    """Where PostgreSQL 15's initdb, pg_ctl and psql are."""
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


def timescaledb_installed(pg_bindir: Path) -> bool:
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


class PostgresCluster:
    """The cluster kept in ``root/pg`` (also its socket directory) with its log ``root/pg.log``."""

    def __init__(self, root: Path, log: Callable[[str], None]) -> None:
        self._root = root
        self._log = log
        self.pg_dir = root / "pg"
        self._pg_log = root / "pg.log"

    def initialised(self) -> bool:
        return (self.pg_dir / "PG_VERSION").exists()

    def socket_dir(self) -> Path:
        if len(str(self.pg_dir)) <= _MAX_SOCKET_DIR:
            return self.pg_dir
        # Too long for a unix socket path: a short directory named after the root, so it is
        # found again without being recorded anywhere.
        digest = hashlib.sha256(str(self.pg_dir).encode()).hexdigest()[:16]
        return Path("/tmp") / f"rpm-pg-{digest}"  # noqa: S108 - created 0700 and owner-checked

    def prepare(self, bindir: Path, user: Account | None, password: str, socket_dir: Path) -> None:
        """Make the log and socket directory, and initdb the cluster unless it exists."""
        if user is not None:
            grant_search(self._root, user, self._log)
        if not self._pg_log.exists():
            self._pg_log.touch(mode=0o600)
        chown(self._pg_log, user)
        if socket_dir != self.pg_dir:
            make_private_dir(socket_dir, user)
        if self.initialised():
            return
        if self.pg_dir.exists() and any(self.pg_dir.iterdir()):
            raise LocalServicesError(f"{self.pg_dir} is neither empty nor a PostgreSQL cluster")
        self.pg_dir.mkdir(mode=0o700, exist_ok=True)
        chown(self.pg_dir, user)
        pwfile = self._root / ".pg-password"
        pwfile.unlink(missing_ok=True)
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(password + "\n")
            chown(pwfile, user)
            base = [
                str(bindir / "initdb"),
                f"--pgdata={self.pg_dir}",
                f"--username={DB_ROLE}",
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--data-checksums",  # torn or corrupted pages are reported, not read silently
            ]
            result = run([*base, "--locale=C.UTF-8"], name_of(user))
            if result.returncode != 0 and "locale" in result.stderr.lower():
                result = run([*base, "--no-locale"], name_of(user))
            if result.returncode != 0:
                raise LocalServicesError(f"initdb failed:\n{result.stderr.strip()}")
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.pg_dir / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\n# simulators.localservices\ninclude = 'rpm.conf'\n")
        self._log(f"initialised a PostgreSQL 15 cluster in {self.pg_dir}")

    def write_settings(
        self, port: int, socket_dir: Path, timescaledb: bool, user: Account | None
    ) -> None:
        target = self.pg_dir / "rpm.conf"
        target.write_text(render_pg_settings(port, socket_dir, timescaledb))
        chown(target, user)

    def start(self, bindir: Path, user: Account | None) -> None:
        argv = [
            str(bindir / "pg_ctl"),
            f"--pgdata={self.pg_dir}",
            f"--log={self._pg_log}",
            f"--timeout={_PG_WAIT_S}",
            "--wait",
            "--silent",
            "start",
        ]
        result = run(argv, name_of(user), timeout=_PG_WAIT_S + 10)
        if result.returncode != 0 or self.postmaster() is None:
            raise LocalServicesError(f"PostgreSQL did not start: {self._failure(result)}")

    def restart(self, user: Account | None) -> None:
        """Start the cluster again with the settings it was last started with."""
        if not self.initialised():
            raise LocalServicesError(f"no PostgreSQL cluster in {self.pg_dir}: start() first")
        socket_dir = self.socket_dir()
        if socket_dir != self.pg_dir:  # stop() removed it
            make_private_dir(socket_dir, user)
        self.start(find_pg_bindir(), user)

    def postmaster(self) -> tuple[int, int] | None:
        """(pid, port) of the cluster's postmaster when it is up and ready."""
        try:
            parsed = parse_postmaster_pid((self.pg_dir / "postmaster.pid").read_text())
        except OSError:
            return None
        if parsed is None:
            return None
        pid, port, status = parsed
        if status != "ready" or not pid_alive(pid):
            return None
        return pid, port

    def stop(self) -> None:
        """Fast shutdown (sessions end, nothing committed is lost); nothing running is fine."""
        try:
            parsed = parse_postmaster_pid((self.pg_dir / "postmaster.pid").read_text())
        except OSError:
            parsed = None
        if parsed is not None and pid_alive(parsed[0]):
            user = service_account("postgres", required=True)
            argv = [
                str(find_pg_bindir() / "pg_ctl"),
                f"--pgdata={self.pg_dir}",
                "--mode=fast",
                f"--timeout={_PG_WAIT_S}",
                "--wait",
                "--silent",
                "stop",
            ]
            result = run(argv, name_of(user), timeout=_PG_WAIT_S + 10)
            if result.returncode != 0 and pid_alive(parsed[0]):
                raise LocalServicesError(f"PostgreSQL did not stop: {self._failure(result)}")
        socket_dir = self.socket_dir()
        if socket_dir != self.pg_dir:
            with contextlib.suppress(OSError):
                socket_dir.rmdir()

    def psql(self, socket_dir: Path, port: int, script: str) -> str:
        argv = [
            str(find_pg_bindir() / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--no-align",
            "--tuples-only",
            "--set=ON_ERROR_STOP=1",
            f"--host={socket_dir}",
            f"--port={port}",
            f"--username={DB_ROLE}",
            "--dbname=postgres",
        ]
        result = run(argv, None, stdin=script)  # as root too: root may use the socket
        if result.returncode != 0:
            raise LocalServicesError(f"psql failed: {self._failure(result)}")
        return result.stdout

    def flavour(
        self,
        socket_dir: Path,
        port: int,
        *,
        timescaledb: bool,
        timescaledb_refused: bool,
        create_database: bool = False,
        new_password: str | None = None,
    ) -> str:
        """Ensure the rpm database (and password); describe the server for the log."""
        script = ""
        if new_password is not None:  # on stdin, never in argv; token_urlsafe has no quotes
            script += f"ALTER ROLE {DB_ROLE} PASSWORD '{new_password}';\n"
        if create_database:
            script += (
                "SELECT 'CREATE DATABASE rpm' WHERE NOT EXISTS "
                "(SELECT FROM pg_database WHERE datname = 'rpm')\\gexec\n"
            )
        script += (
            "SELECT coalesce((SELECT default_version FROM pg_available_extensions"
            " WHERE name = 'timescaledb'), '');\n"
        )
        version = self.psql(socket_dir, port, script).strip()
        if timescaledb:
            return f"PostgreSQL 15 with TimescaleDB {version or 'of unknown version'}"
        if version and timescaledb_refused:
            return "plain PostgreSQL 15 (TimescaleDB disabled on request)"
        return "plain PostgreSQL 15 (TimescaleDB extension not installed)"

    def _failure(self, result: subprocess.CompletedProcess[str]) -> str:
        return f"{result.stderr.strip()}\n--- {self._pg_log} ---\n{tail(self._pg_log)}"
