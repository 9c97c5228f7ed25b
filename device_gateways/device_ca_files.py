"""The device CA on disk, and telling the broker to reload its CRL.

``<dir>/ca.key`` (0600: the deployment's signing key, never committed, never logged),
``<dir>/ca.pem`` and ``<dir>/crl.pem`` (0644: the broker reads them as ``cafile`` and
``crlfile``). Mosquitto 2.0 reads the CRL again on SIGHUP (its listeners' TLS contexts are
rebuilt), so a revoked certificate is refused from the next connection on.
"""

from __future__ import annotations

import contextlib
import os
import signal
from datetime import datetime
from pathlib import Path

from .device_ca import DeviceCA, Revoked

KEY_FILE = "ca.key"
CERT_FILE = "ca.pem"
CRL_FILE = "crl.pem"


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically: the broker never reads half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def ensure(directory: Path, now: datetime, name: str = "RPM device CA") -> DeviceCA:
    """The CA kept in ``directory``, created (key, certificate, empty CRL) when absent."""
    key, cert = directory / KEY_FILE, directory / CERT_FILE
    if key.exists() and cert.exists():
        return DeviceCA.load(key.read_bytes(), cert.read_bytes())
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    ca = DeviceCA.create(name, now)
    _write(key, ca.key_pem(), 0o600)
    _write(cert, ca.cert_pem(), 0o644)
    write_crl(directory, ca.crl([], now))
    return ca


def write_crl(directory: Path, pem: bytes) -> None:
    _write(directory / CRL_FILE, pem, 0o644)


def publish_crl(directory: Path, ca: DeviceCA, revoked: list[Revoked], now: datetime) -> None:
    write_crl(directory, ca.crl(revoked, now))


def reload_broker(pid_file: Path) -> bool:
    """SIGHUP the broker whose pid ``pid_file`` holds; False when it is not running."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
        return True
    return False
