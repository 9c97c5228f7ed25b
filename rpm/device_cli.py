"""``rpm devices import``: enrol a shipment of devices from a CSV file, by certificate.
``rpm devices bind-client-ids``: bind the password logins made before client ids were bound.
``rpm devices broker-cert HOST --out DIR``: the broker's TLS certificate, signed by the device CA.

The manufacturer's file has a header row and the columns ``id``, ``kind``, ``csr`` and
optionally ``vendor`` and ``serial``. ``csr`` is the device's certificate signing request
in PEM (quoted, newlines kept), or the name of a file holding it, relative to the CSV file.
Devices are enrolled 1,000 at a time, each thousand in one transaction, exactly as
``POST /api/devices/bulk`` does (docs/devices.md); a retry of the same file stores nothing
twice. The certificates go to ``--out``, a CSV file of ``device_id,serial,certificate``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import io
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from device_gateways import device_ca_files, dynsec
from device_gateways.broker_admin import BrokerAdmin
from rpm.api.device_certs import BULK_MAX, CertDeviceIn, DeviceAuthority, enroll_many
from rpm.domain.errors import RpmError
from rpm.settings import Settings
from rpm.settings.local_option import add_local_option
from rpm.storage import registry
from rpm.storage.audit import append_cli
from rpm.storage.pool import connect

COLUMNS = ("id", "kind", "csr")
# Each command of the dynamic-security plugin rewrites its file; a message holds this many.
BIND_PER_MESSAGE = 100
BIND_HELP = """\
Give every device password login in the broker its own id as its only client id (the
plugin's setClientId), as enrolment has done since. Logins made before connect with any
client id, so one could take over another client's session (docs/devices.md, "Client ids").
Idempotent: run it once after upgrading, again at will.
"""
BROKER_CERT_HELP = """\
Write the broker's TLS certificate for HOST (the name or address devices connect to),
signed by the device CA in RPM_MQTT_DEVICE_CA_DIR (created when absent), as DIR/broker.pem
and DIR/broker.key (0600). Devices trust the device CA, so they verify the broker with it.
Idempotent: a certificate for HOST from this CA is kept (docs/deploy.md).
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], local: Path) -> None:
    p = sub.add_parser("devices", help="devices: enrol a shipment by certificate")
    devices = p.add_subparsers(dest="devices_command", required=True)
    p = devices.add_parser(
        "import",
        help="enrol the devices of a CSV file (id, kind, csr[, vendor, serial])",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("csv", type=Path, help="the shipment: id, kind, csr[, vendor, serial]")
    p.add_argument("--out", type=Path, required=True, help="where the certificates go (CSV)")
    add_local_option(p, local)
    p = devices.add_parser(
        "bind-client-ids",
        help="bind each device password login to its own client id",
        description=BIND_HELP,
    )
    add_local_option(p, local)
    p = devices.add_parser(
        "broker-cert",
        help="the broker's TLS certificate, signed by the device CA",
        description=BROKER_CERT_HELP,
    )
    p.add_argument("host", help="the name or address devices connect to")
    p.add_argument("--out", type=Path, required=True, help="directory for broker.pem, .key")
    add_local_option(p, local)


def parse_shipment(text: str, base: Path | None = None) -> list[CertDeviceIn]:
    """The rows of a shipment CSV; ``ValueError`` naming the first bad line. Pure, unless a
    ``csr`` names a file (read relative to ``base``)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"the header lacks {', '.join(missing)}")
    rows = []
    for line, record in enumerate(reader, start=2):
        csr = (record.get("csr") or "").strip()
        if csr and not csr.startswith("-----BEGIN") and base is not None:
            try:
                csr = (base / csr).read_text()
            except OSError as exc:
                raise ValueError(f"line {line}: cannot read {csr!r}: {exc.strerror}") from None
        fields = {k: (v or None) for k, v in record.items() if k in {"vendor", "serial"}}
        try:
            rows.append(
                CertDeviceIn(id=record.get("id") or "", kind=record.get("kind"), csr=csr, **fields)
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ValueError(f"line {line}: {where}: {first['msg']}") from None
    if not rows:
        raise ValueError("no devices in the file")
    return rows


def _chunks(rows: Sequence[CertDeviceIn]) -> Iterator[Sequence[CertDeviceIn]]:
    for i in range(0, len(rows), BULK_MAX):
        yield rows[i : i + BULK_MAX]


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``rpm devices import``: 0 when every device is enrolled, 2 for a bad file or row."""
    if args.devices_command == "bind-client-ids":
        try:
            return asyncio.run(bind_client_ids(settings))
        except RpmError as exc:
            print(f"rpm devices bind-client-ids: {exc}", file=sys.stderr)
            return 2
    if args.devices_command == "broker-cert":
        return broker_cert(args.host, args.out, settings)
    try:
        rows = parse_shipment(args.csv.read_text(), args.csv.parent)
    except (OSError, ValueError) as exc:
        print(f"rpm devices import: {args.csv}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(import_rows(rows, args.out, settings))
    except RpmError as exc:
        print(f"rpm devices import: {exc}", file=sys.stderr)
        return 2


async def import_rows(rows: Sequence[CertDeviceIn], out: Path, settings: Settings) -> int:
    auth = DeviceAuthority.from_settings(settings)
    now = datetime.now(UTC)
    ca = auth.ca(now)
    actor = f"cli:{getpass.getuser()}"
    written = enrolled = already = 0
    conn = await connect(settings.database.url.get_secret_value())
    try:
        with out.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["device_id", "serial", "certificate"])
            for chunk in _chunks(rows):
                async with conn.transaction():
                    result = await enroll_many(
                        conn, auth.signer, ca, auth.check_id, chunk, actor, now
                    )
                    await append_cli(
                        conn,
                        actor=actor,
                        command="rpm devices import",
                        action="create",
                        resource="device",
                        resource_id=f"{len(chunk)} devices",
                    )
                for c in result.enrolled:
                    writer.writerow([c.device_id, c.serial, c.certificate])
                written += len(result.enrolled)
                already += result.already
                enrolled += len(result.enrolled) - result.already
    finally:
        await conn.close()
        auth.signer.close()
    print(f"{enrolled} devices enrolled, {already} already were; {written} certificates in {out}")
    return 0


async def bind_client_ids(settings: Settings) -> int:
    """``rpm devices bind-client-ids``: bind every device password login to its own id."""
    conn = await connect(settings.database.url.get_secret_value())
    try:
        ids = await registry.password_logins(conn)
        broker = BrokerAdmin(settings.mqtt.admin())
        for i in range(0, len(ids), BIND_PER_MESSAGE):
            chunk = ids[i : i + BIND_PER_MESSAGE]
            # A login deleted since (moved to a certificate) is not there to bind.
            await broker.apply(
                [c for d in chunk for c in dynsec.bind_client_id(d)], tolerate=("not found",)
            )
        await append_cli(
            conn,
            actor=f"cli:{getpass.getuser()}",
            command="rpm devices bind-client-ids",
            action="update",
            resource="device",
            resource_id=f"{len(ids)} devices",
        )
    finally:
        await conn.close()
    print(f"{len(ids)} device logins bound to their own client id")
    return 0


def broker_cert(host: str, out: Path, settings: Settings) -> int:
    """``rpm devices broker-cert``: 0 once ``out`` holds a certificate for ``host``."""
    if settings.mqtt.device_ca_dir is None:
        print("rpm devices broker-cert: set RPM_MQTT_DEVICE_CA_DIR", file=sys.stderr)
        return 2
    ca_dir = Path(settings.mqtt.device_ca_dir)
    written = device_ca_files.ensure_broker_cert(ca_dir, out, host, datetime.now(UTC))
    verb = "written" if written else "kept"
    print(f"broker certificate for {host} {verb}: {out / device_ca_files.BROKER_CERT}")
    return 0
