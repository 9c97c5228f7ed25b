"""What the local services are told, as text: the cluster's settings, mosquitto.conf, and
what a postmaster.pid file says. Pure: text in, text out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
GATEWAY_USERNAME = "rpm-gateway"
DEVICE_USERNAME = "rpm-fleet"


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


@dataclass(frozen=True, slots=True)
class DeviceCertListener:
    """A listener for devices with certificates from the device CA in ``ca_dir``
    (``ca.pem``, ``crl.pem``); the broker's own certificate and key are ``certfile``,
    ``keyfile``."""

    port: int
    ca_dir: Path
    certfile: Path
    keyfile: Path


DEVICE_ACL = """\
# Written by simulators.localservices on every start. A device with a certificate logs in as
# its certificate's CN (use_identity_as_username) and may publish only under its own topic.
# Logins of the dynamic-security plugin match no rule here and are judged by the plugin.
pattern write rpm/v1/devices/%u/#
"""


def render_device_listener(certs: DeviceCertListener, acl_file: Path) -> str:
    """The certificate listener: the device CA and its CRL (reloaded on SIGHUP), the CN as
    the login and as the client id, and the pattern ACL."""
    return (
        f"listener {certs.port} {LOOPBACK}\n"
        f"cafile {certs.ca_dir / 'ca.pem'}\ncrlfile {certs.ca_dir / 'crl.pem'}\n"
        f"certfile {certs.certfile}\nkeyfile {certs.keyfile}\n"
        "tls_version tlsv1.2\nrequire_certificate true\n"
        "use_identity_as_username true\nuse_username_as_clientid true\n"
        f"acl_file {acl_file}\n"
    )


def render_mosquitto_conf(
    port: int,
    mqtt_dir: Path,
    plugin: str = "",
    tls: MqttTls | None = None,
    device_certs: DeviceCertListener | None = None,
) -> str:
    """mosquitto.conf: authenticated loopback listener(s) with durable sessions.

    Logins and ACLs come from the dynamic-security plugin (``dynamic-security.json``),
    so the server can provision per-device logins while the broker runs; devices with
    certificates use their own listener (``device_certs``) and a pattern ACL.
    """
    tls_listener = ""
    if tls is not None:
        tls_listener = (
            f"listener {tls.port} {LOOPBACK}\n"
            f"cafile {tls.cafile}\ncertfile {tls.certfile}\nkeyfile {tls.keyfile}\n"
            "tls_version tlsv1.2\n"
        )
    if device_certs is not None:
        tls_listener += render_device_listener(device_certs, mqtt_dir / "device-acl")
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
