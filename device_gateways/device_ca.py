"""The deployment's own device CA: signing device CSRs, the broker's certificate, the CRL.

No files and no network: PEM bytes in, PEM bytes out (``device_ca_files`` keeps them on
disk). A device certificate's subject is ``CN=<device id>``; the broker takes that as the
login (Mosquitto ``use_identity_as_username``) and a pattern ACL lets it publish only under
``rpm/v1/devices/<device id>/``, so the broker holds nothing per device (docs/devices.md).
The device keeps its private key: we sign its certificate signing request (CSR).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rpm.domain.errors import InvalidRequestError

# A device certificate is valid this long by default (about a device's service life).
DEVICE_CERT_DAYS = 3650
CA_DAYS = 7300
# A CRL tells relying parties when to expect the next one; we write a new one on each change.
CRL_DAYS = 30
_MIN_RSA_BITS = 2048
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A signed device certificate: its serial (hex), PEM and the SHA-256 of its public key."""

    device_id: str
    serial: str
    pem: str
    key_sha256: str
    not_after: datetime


@dataclass(frozen=True, slots=True)
class Revoked:
    serial: str  # hex, as IssuedCertificate.serial
    at: datetime


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(device_id: str, key: ec.EllipticCurvePrivateKey) -> str:
    """The CSR a device (or its manufacturer) sends: ``CN=<device id>``, signed by its key."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def _key_sha256(public_key: x509.Certificate | x509.CertificateSigningRequest) -> str:
    der = public_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def parse_csr(pem: str) -> x509.CertificateSigningRequest:
    """A CSR whose self-signature holds and whose key is strong enough; else
    ``InvalidRequestError`` (422)."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidRequestError("not a PEM certificate signing request") from None
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        valid = False
    if not valid:
        raise InvalidRequestError("the CSR's signature does not match its key")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise InvalidRequestError(f"RSA keys need at least {_MIN_RSA_BITS} bits")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ALLOWED_CURVES):
            raise InvalidRequestError("EC keys must be on P-256 or P-384")
    else:
        raise InvalidRequestError("the key must be EC (P-256, P-384) or RSA (2048 bits or more)")
    return csr


def csr_key_sha256(pem: str) -> str:
    """SHA-256 of the CSR's public key (hex): how a retried enrolment is recognised."""
    return _key_sha256(parse_csr(pem))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True, slots=True)
class DeviceCA:
    """The CA's key and certificate, loaded once; signs device and broker certificates."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    cert: x509.Certificate
    # Where relying parties fetch the CRL (http://…/crl.pem), named in every device
    # certificate (CRL distribution point, RFC 5280 §4.2.1.13) and in the CRL (issuing
    # distribution point, §5.2.5): EMQX checks revocation only this way. None: neither.
    crl_url: str | None = None

    @classmethod
    def create(cls, name: str, now: datetime) -> DeviceCA:
        key = new_key()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, key_pem_bytes: bytes, cert_pem_bytes: bytes) -> DeviceCA:
        key = serialization.load_pem_private_key(key_pem_bytes, None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the device CA key must be an EC key")
        return cls(key, x509.load_pem_x509_certificate(cert_pem_bytes))

    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _sign(
        self,
        subject: str,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        now: datetime,
        days: int,
        usage: x509.ObjectIdentifier,
        san: x509.SubjectAlternativeName | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))  # a device clock a little behind
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        if self.crl_url is not None and usage == ExtendedKeyUsageOID.CLIENT_AUTH:
            point = x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(self.crl_url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
            builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def sign_device(
        self, device_id: str, csr_pem: str, now: datetime, days: int = DEVICE_CERT_DAYS
    ) -> IssuedCertificate:
        """A client certificate for ``device_id`` with the CSR's key. The subject is always
        ``CN=<device id>``, whatever the CSR asked for: the identity is ours to give."""
        csr = parse_csr(csr_pem)
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)  # parse_csr
        cert = self._sign(device_id, key, now, days, ExtendedKeyUsageOID.CLIENT_AUTH)
        return IssuedCertificate(
            device_id=device_id,
            serial=format(cert.serial_number, "x"),
            pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_sha256=_key_sha256(csr),
            not_after=cert.not_valid_after_utc,
        )

    def sign_server(
        self, host: str, key: ec.EllipticCurvePrivateKey, now: datetime, days: int = 825
    ) -> bytes:
        """The broker's TLS certificate for ``host`` (an IP address or a DNS name)."""
        try:
            general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            general = x509.DNSName(host)
        cert = self._sign(
            host,
            key.public_key(),
            now,
            days,
            ExtendedKeyUsageOID.SERVER_AUTH,
            x509.SubjectAlternativeName([general]),
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def crl(self, revoked: Iterable[Revoked], now: datetime) -> bytes:
        """The certificate revocation list (PEM) naming every revoked serial."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now)
            .next_update(now + timedelta(days=CRL_DAYS))
        )
        if self.crl_url is not None:
            # RFC 5280 §5.2.5: critical. EMQX enforces a CRL only when it carries one.
            builder = builder.add_extension(
                x509.IssuingDistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(self.crl_url)],
                    relative_name=None,
                    only_contains_user_certs=True,
                    only_contains_ca_certs=False,
                    only_some_reasons=None,
                    indirect_crl=False,
                    only_contains_attribute_certs=False,
                ),
                critical=True,
            )
        for r in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(r.serial, 16))
                .revocation_date(r.at)
                .build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
