"""A virtual device with a certificate: it makes its key and CSR, keeps its certificate and
connects to the broker's certificate listener (docs/devices.md, "Identity by certificate").

The key never leaves the device: enrolment sends the CSR and stores the certificate that
comes back. ``connect`` opens an MQTT session authenticated by the certificate alone (no
username, no password); the broker takes the login from the certificate's CN.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric import ec

from device_gateways import device_ca
from device_gateways.mqtt import TOPIC_PREFIX


@dataclass
class CertDevice:
    """One device's key store in ``directory``: key.pem (0600), cert.pem once enrolled."""

    device_id: str
    directory: Path
    key: ec.EllipticCurvePrivateKey = field(default_factory=device_ca.new_key, repr=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(device_ca.key_pem(self.key))

    @property
    def key_file(self) -> Path:
        return self.directory / f"{self.device_id}.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / f"{self.device_id}.pem"

    @property
    def topic(self) -> str:
        return f"{TOPIC_PREFIX}{self.device_id}/readings"

    def csr(self) -> str:
        return device_ca.make_csr(self.device_id, self.key)

    def enrol_row(self, kind: str = "bp_cuff") -> dict[str, Any]:
        """This device as a row of ``POST /api/devices/bulk``."""
        return {"id": self.device_id, "kind": kind, "csr": self.csr()}

    def keep(self, certificate_pem: str) -> None:
        self.cert_file.write_text(certificate_pem)

    def tls_context(self, broker_ca: Path) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(broker_ca))
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def client(self, host: str, port: int, broker_ca: Path, **options: Any) -> aiomqtt.Client:
        """An MQTT client authenticated by the certificate; the broker binds the client id
        to the CN (``use_username_as_clientid``)."""
        return aiomqtt.Client(
            host,
            port,
            identifier=self.device_id,
            tls_context=self.tls_context(broker_ca),
            **options,
        )
