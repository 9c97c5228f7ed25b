"""The device CA on disk, and telling the broker to reload its CRL.

``<dir>/ca.key`` (0600: the deployment's signing key, never committed, never logged),
``<dir>/ca.pem`` and ``<dir>/crl.pem`` (0644: the broker reads them as ``cafile`` and
``crlfile``). Mosquitto 2.0 reads the CRL again on SIGHUP (its listeners' TLS contexts are
rebuilt), so a revoked certificate is refused from the next connection on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from cryptography import x509

from . import device_ca
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


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One creator at a time: several API processes (or hosts sharing the directory) may
    meet a missing CA at once, and two CAs written over each other leave a key that does
    not match the certificate."""
    with (directory / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(directory: Path, now: datetime, name: str = "RPM device CA") -> DeviceCA:
    """The CA kept in ``directory``, created (key, certificate, empty CRL) when absent."""
    key, cert = directory / KEY_FILE, directory / CERT_FILE
    if key.exists() and cert.exists():
        return DeviceCA.load(key.read_bytes(), cert.read_bytes())
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    with _locked(directory):
        if key.exists() and cert.exists():  # made by another process while we waited
            return DeviceCA.load(key.read_bytes(), cert.read_bytes())
        ca = DeviceCA.create(name, now)
        _write(key, ca.key_pem(), 0o600)
        _write(cert, ca.cert_pem(), 0o644)
        write_crl(directory, ca.crl([], now))
        return ca


BROKER_CERT = "broker.pem"
BROKER_KEY = "broker.key"


def ensure_broker_cert(ca_dir: Path, out: Path, host: str, now: datetime) -> bool:
    """The broker's TLS certificate for ``host``, signed by the device CA (which devices
    already trust), in ``out/broker.pem`` and ``out/broker.key`` (0600). Kept when one for
    ``host`` from this CA is there; True when a new one was written."""
    ca = ensure(ca_dir, now)
    certfile, keyfile = out / BROKER_CERT, out / BROKER_KEY
    with contextlib.suppress(OSError, ValueError):
        cert = x509.load_pem_x509_certificate(certfile.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        served = [str(n) for n in names.get_values_for_type(x509.DNSName)] + [
            str(n) for n in names.get_values_for_type(x509.IPAddress)
        ]
        if keyfile.exists() and cert.issuer == ca.cert.subject and served == [host]:
            return False
    out.mkdir(mode=0o755, parents=True, exist_ok=True)
    key = device_ca.new_key()
    _write(keyfile, device_ca.key_pem(key), 0o600)
    _write(certfile, ca.sign_server(host, key, now), 0o644)
    return True


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
