"""A project-local PostgreSQL 15 cluster and Mosquitto broker, loopback only.

Offers :class:`LocalServices` (start, find and stop both), :class:`LocalServicesError`,
:class:`MqttTls` (a second, TLS listener), the port helpers :func:`free_port` and
:func:`pick_port`, and the pure renderers :func:`render_pg_settings`,
:func:`render_mosquitto_conf` and :func:`parse_postmaster_pid`.

Everything lives under one directory ``root``::

    endpoints.json       the saved ServiceEndpoints, mode 0600 (it holds the passwords)
    .lock                serialises start() and stop() between processes
    pg/                  the cluster (PGDATA), also its unix socket directory
    pg/rpm.conf          our settings, rewritten on every start, included from postgresql.conf
    pg.log               the server log (pg_ctl -l)
    mqtt/                mosquitto.conf (rewritten on every start), passwd, acl, mosquitto.log,
                         mosquitto.pid and data/ (persistence)

Running as root: initdb, pg_ctl and postgres refuse root, so they run as the ``postgres``
user through ``runuser``; Mosquitto 2 started as root reads its files and binds, then drops to
the ``mosquitto`` user, which must still write data/ and remove its pid file. So ``pg/`` and
``pg.log`` are owned by postgres, ``mqtt/`` and its files by mosquitto, and each directory
above ``root`` that one of these users cannot search gets ``o+x`` (search only: nobody gains
the right to list it). That is the minimum; pytest's ``/tmp/pytest-of-root`` (0700) is the
usual case. Nothing else changes owner or mode.

Secrets never appear on a command line or in a log: initdb reads a password file, Mosquitto's
passwords are hashed in place by ``mosquitto_passwd -U``, and ``repr`` of ServiceEndpoints
hides them. The cluster trusts local socket logins (``--auth-local=trust``); its socket lives
in a 0700 directory, so only its owner (and root) can use that.
"""

from rpm.domain.errors import LocalServicesError
from rpm.local_endpoints import ServiceEndpoints
from simulators.localservices.config import (
    DEVICE_USERNAME,
    GATEWAY_USERNAME,
    LOOPBACK,
    MqttTls,
    parse_postmaster_pid,
    render_mosquitto_conf,
    render_pg_settings,
)
from simulators.localservices.processes import free_port, pick_port
from simulators.localservices.services import LocalServices

__all__ = [
    "DEVICE_USERNAME",
    "GATEWAY_USERNAME",
    "LOOPBACK",
    "LocalServices",
    "LocalServicesError",
    "MqttTls",
    "ServiceEndpoints",
    "free_port",
    "parse_postmaster_pid",
    "pick_port",
    "render_mosquitto_conf",
    "render_pg_settings",
]
