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
