"""The Mosquitto broker in ``root/mqtt``: its config, dynamic-security logins, start and stop."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from device_gateways import device_ca, device_ca_files, dynsec
from rpm.domain.errors import LocalServicesError
from rpm.local_endpoints import DEVICE_CA_DIR, ServiceEndpoints
from simulators.localservices.accounts import Account, chown, grant_search
from simulators.localservices.config import (
    DEVICE_ACL,
    LOOPBACK,
    DeviceCertListener,
    MqttTls,
    render_mosquitto_conf,
)
from simulators.localservices.processes import (
    WAIT_S,
    accepts,
    cmdline,
    pid_alive,
    run,
    tail,
    wait_until,
)

_MQTT_BINDIRS = ("/usr/sbin", "/usr/local/sbin")  # mosquitto is in sbin, often off a user's PATH


def find_mosquitto() -> tuple[str, str]:
    """The broker binary and its dynamic-security plugin."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_MQTT_BINDIRS])
    broker = shutil.which("mosquitto", path=path)
    plugins = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so")) + sorted(
        Path("/usr/lib").glob("mosquitto_dynamic_security.so")
    )
    if broker is None or not plugins:
        raise LocalServicesError("mosquitto not found; run scripts/install-system-deps.sh")
    return broker, str(plugins[0])


class MosquittoBroker:
    """mosquitto.conf, dynamic-security.json, log, pid file and data/ in ``root/mqtt``."""

    def __init__(
        self,
        root: Path,
        tls: MqttTls | None,
        log: Callable[[str], None],
    ) -> None:
        self._root = root
        self._tls = tls
        self._log = log
        self.mqtt_dir = root / "mqtt"
        self.device_ca_dir = root / DEVICE_CA_DIR

    def _device_listener(self, port: int | None) -> DeviceCertListener | None:
        """The device CA (made once, in ``root/device-ca``) and the broker's certificate
        for the certificate listener on ``port``; None when there is none."""
        if port is None:
            return None
        now = datetime.now(UTC)  # certificates are judged by the broker's wall clock
        ca = device_ca_files.ensure(self.device_ca_dir, now)
        certfile, keyfile = (
            self.mqtt_dir / "device-listener.pem",
            self.mqtt_dir / "device-listener.key",
        )
        if not certfile.exists() or not keyfile.exists():
            key = device_ca.new_key()
            fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(device_ca.key_pem(key))
            certfile.write_bytes(ca.sign_server(LOOPBACK, key, now))
        (self.mqtt_dir / "device-acl").write_text(DEVICE_ACL)
        return DeviceCertListener(port, self.device_ca_dir, certfile, keyfile)

    def configured(self) -> bool:
        return (self.mqtt_dir / "mosquitto.conf").exists()

    def prepare(self, endpoints: ServiceEndpoints, plugin: str, user: Account | None) -> None:
        """Write the config (every start: with the certificate listener when
        ``endpoints.mqtt_device_cert_port`` names one) and the first logins (once)."""
        if user is not None:
            grant_search(self._root, user, self._log)
        data = self.mqtt_dir / "data"
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.mqtt_dir.chmod(0o700)
        certs = self._device_listener(endpoints.mqtt_device_cert_port)
        (self.mqtt_dir / "mosquitto.conf").write_text(
            render_mosquitto_conf(endpoints.mqtt_port, self.mqtt_dir, plugin, self._tls, certs)
        )
        # The broker owns this file once it exists: it holds the device logins provisioned
        # since. Written once, with hashed passwords only.
        security = self.mqtt_dir / "dynamic-security.json"
        if not security.exists():
            document = dynsec.initial_config(
                {
                    dynsec.ADMIN_ROLE: (
                        endpoints.mqtt_admin_username,
                        endpoints.mqtt_admin_password,
                    ),
                    dynsec.GATEWAY_ROLE: (
                        endpoints.mqtt_gateway_username,
                        endpoints.mqtt_gateway_password,
                    ),
                    dynsec.FLEET_ROLE: (
                        endpoints.mqtt_device_username,
                        endpoints.mqtt_device_password,
                    ),
                }
            )
            fd = os.open(security, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle, indent=2)
        (self.mqtt_dir / "mosquitto.pid").unlink(missing_ok=True)
        if user is not None:
            for path in [self.mqtt_dir, *self.mqtt_dir.rglob("*")]:
                chown(path, user)

    def start(self, broker: str, port: int) -> None:
        """Start the broker and wait until it listens on ``port``."""
        conf = self.mqtt_dir / "mosquitto.conf"
        log_file = self.mqtt_dir / "mosquitto.log"
        # -d: the broker forks, calls setsid() and is nobody's child here, so no Popen lingers.
        result = run([broker, "-c", str(conf), "-d"], None)
        if result.returncode != 0:
            raise LocalServicesError(
                f"Mosquitto did not start: {result.stderr.strip()}\n"
                f"--- {log_file} ---\n{tail(log_file)}"
            )

        def up() -> bool:
            pid = self.pid()
            if pid is None and (self.mqtt_dir / "mosquitto.pid").exists():
                raise LocalServicesError(f"Mosquitto exited\n--- {log_file} ---\n{tail(log_file)}")
            return pid is not None and accepts(port)

        if not wait_until(up, WAIT_S):
            raise LocalServicesError(
                f"Mosquitto did not listen on {LOOPBACK}:{port} within {WAIT_S:.0f} s\n"
                f"--- {log_file} ---\n{tail(log_file)}"
            )

    def pid(self) -> int | None:
        """The pid of the broker running our config, from its pid file or else /proc."""
        conf = str(self.mqtt_dir / "mosquitto.conf")

        def ours(pid: int) -> bool:
            return conf in cmdline(pid) and pid_alive(pid)

        with contextlib.suppress(OSError, ValueError):
            pid = int((self.mqtt_dir / "mosquitto.pid").read_text().strip())
            if ours(pid):
                return pid
        with contextlib.suppress(OSError):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and ours(int(entry.name)):
                    return int(entry.name)
        return None

    def stop(self) -> None:
        """SIGTERM (it saves sessions and queued messages first); nothing running is fine."""
        pid = self.pid()
        if pid is not None:
            # SIGTERM saves the persistence file and exits; SIGKILL only as a last resort.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if wait_until(lambda: not pid_alive(pid), WAIT_S):
                    break
            else:
                raise LocalServicesError(f"Mosquitto (pid {pid}) did not exit")
        (self.mqtt_dir / "mosquitto.pid").unlink(missing_ok=True)
