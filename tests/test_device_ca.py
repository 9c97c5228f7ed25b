"""The device CA without a broker or a database: what it signs, what it refuses, the CRL,
and the shipment CSV of ``rpm devices import``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_gateways.device_ca import DeviceCA, Revoked, make_csr, new_key
from rpm.device_cli import parse_shipment
from rpm.domain.errors import InvalidRequestError
from simulators.localservices.config import DEVICE_ACL, DeviceCertListener, render_mosquitto_conf

pytestmark = pytest.mark.pure
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> DeviceCA:
    return DeviceCA.create("test device CA", NOW)


def test_the_certificate_names_the_device_whatever_the_csr_asked(ca: DeviceCA) -> None:
    key = new_key()
    issued = ca.sign_device("cuff-1", make_csr("rpm-gateway", key), NOW)  # asks for another CN
    cert = x509.load_pem_x509_certificate(issued.pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cuff-1"
    assert cert.issuer == ca.cert.subject
    assert format(cert.serial_number, "x") == issued.serial
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca.cert)  # raises when the signature does not hold
    assert cert.public_key() == key.public_key()


def test_a_ca_saved_and_loaded_signs_the_same(ca: DeviceCA) -> None:
    again = DeviceCA.load(ca.key_pem(), ca.cert_pem())
    issued = again.sign_device("cuff-2", make_csr("cuff-2", new_key()), NOW)
    x509.load_pem_x509_certificate(issued.pem.encode()).verify_directly_issued_by(ca.cert)


def _csr_with(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("csr", "says"),
    [
        ("not a csr", "not a PEM"),
        (_csr_with(rsa.generate_private_key(65537, 1024)), "2048"),
        (_csr_with(ec.generate_private_key(ec.SECP256K1())), "P-256"),
    ],
)
def test_what_cannot_be_signed_is_refused_with_the_reason(
    ca: DeviceCA, csr: str, says: str
) -> None:
    with pytest.raises(InvalidRequestError, match=says):
        ca.sign_device("cuff-3", csr, NOW)


def test_a_csr_whose_signature_does_not_hold_is_refused(ca: DeviceCA) -> None:
    good = make_csr("cuff-4", new_key())
    der = bytearray(x509.load_pem_x509_csr(good.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(InvalidRequestError):
        ca.sign_device("cuff-4", forged, NOW)


def test_the_crl_names_every_revoked_serial_and_is_signed_by_the_ca(ca: DeviceCA) -> None:
    serials = [ca.sign_device(f"d{i}", make_csr("d", new_key()), NOW).serial for i in range(3)]
    crl = x509.load_pem_x509_crl(ca.crl([Revoked(s, NOW) for s in serials[:2]], NOW))
    assert crl.is_signature_valid(ca.key.public_key())
    assert {format(r.serial_number, "x") for r in crl} == set(serials[:2])
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > NOW


def test_a_shipment_csv_reads_inline_and_file_csrs(tmp_path: Path) -> None:
    inline = make_csr("a", new_key())
    (tmp_path / "b.csr").write_text(make_csr("b", new_key()))
    text = 'id,kind,vendor,serial,csr\ncuff-a,bp_cuff,Acme,SN1,"' + inline + '"\n'
    text += "cuff-b,scale,,,b.csr\n"
    rows = parse_shipment(text, tmp_path)
    assert [(r.id, r.kind, r.vendor, r.serial) for r in rows] == [
        ("cuff-a", "bp_cuff", "Acme", "SN1"),
        ("cuff-b", "scale", None, None),
    ]
    assert rows[1].csr.startswith("-----BEGIN CERTIFICATE REQUEST-----")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("id,kind\ncuff,bp_cuff\n", "lacks csr"),
        ("id,kind,csr\n", "no devices"),
        ("id,kind,csr\ncuff/1,bp_cuff,-----BEGIN x\n", "line 2: id"),
        ("id,kind,csr\ncuff,toaster,-----BEGIN x\n", "line 2: kind"),
        ("id,kind,csr\ncuff,scale,missing.csr\n", "line 2: cannot read"),
    ],
)
def test_a_bad_shipment_names_its_first_bad_line(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_shipment(text, tmp_path)


def test_the_certificate_listener_takes_the_login_from_the_cn_and_reads_the_crl() -> None:
    certs = DeviceCertListener(8883, Path("/d/ca"), Path("/m/b.pem"), Path("/m/b.key"))
    conf = render_mosquitto_conf(1883, Path("/m"), "dynsec.so", None, certs).splitlines()
    listener = conf[conf.index("listener 8883 127.0.0.1") :]
    for line in [
        "cafile /d/ca/ca.pem",
        "crlfile /d/ca/crl.pem",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "acl_file /m/device-acl",
    ]:
        assert line in listener
    assert "pattern write rpm/v1/devices/%u/#" in DEVICE_ACL.splitlines()
    # Without it the broker's configuration is what it always was.
    assert "require_certificate true" not in render_mosquitto_conf(1883, Path("/m"), "dynsec.so")
