"""The development commands the ``rpm`` CLI loads as plug-ins (entry-point group
``rpm.commands`` in pyproject.toml): ``rpm services``, ``rpm demo`` and ``rpm simulate``.

Each is an object with ``add_parser(sub, data_dir)`` and ``main(args) -> int``
(``rpm.cli.Command``). The server never imports this module.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TypeAlias

from rpm.cli import run
from rpm.local_endpoints import DEVICE_CA_DIR
from simulators import simulate
from simulators.localservices import LocalServices

# A string: argparse._SubParsersAction is not subscriptable at run time before Python 3.12.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Services:
    """``rpm services start|stop|status|env``: the project-local PostgreSQL and Mosquitto."""

    def add_parser(self, sub: Subparsers, data_dir: Path) -> None:
        p = sub.add_parser("services", help="start or stop the local PostgreSQL and Mosquitto")
        p.add_argument(
            "action",
            choices=["start", "stop", "status", "env"],
            help="env prints shell exports (with passwords) for the running services",
        )
        p.add_argument("--dir", type=Path, default=data_dir)
        p.add_argument(
            "--device-cert-port",
            type=int,
            default=None,
            help="start: also a listener for devices with certificates from the device CA "
            "(made in DIR/device-ca; docs/devices.md, Identity by certificate); kept for "
            "later starts",
        )

    def main(self, args: argparse.Namespace) -> int:
        action: str = args.action
        root: Path = args.dir
        services = LocalServices(root, device_cert_port=args.device_cert_port)
        if action == "start":
            e = services.start()
            print(
                f"PostgreSQL: 127.0.0.1:{e.database_url.rsplit(':', 1)[-1].split('/')[0]}"
                f"  MQTT: {e.mqtt_host}:{e.mqtt_port}  TimescaleDB: {e.timescaledb}"
            )
            if e.mqtt_device_cert_port is not None:
                print(f"devices with certificates: {e.mqtt_host}:{e.mqtt_device_cert_port}")
            print(f"connection details (with passwords): {root / 'endpoints.json'}")
        elif action == "stop":
            services.stop()
            print("stopped")
        elif action == "env":
            found = services.running()
            if found is None:
                print(f"no local services running in {root}", file=sys.stderr)
                return 1
            exports = {
                "RPM_DATABASE_URL": found.database_url,
                "RPM_MQTT_HOST": found.mqtt_host,
                "RPM_MQTT_PORT": str(found.mqtt_port),
                "RPM_MQTT_USERNAME": found.mqtt_gateway_username,
                "RPM_MQTT_PASSWORD": found.mqtt_gateway_password,
                "RPM_MQTT_ADMIN_USERNAME": found.mqtt_admin_username,
                "RPM_MQTT_ADMIN_PASSWORD": found.mqtt_admin_password,
                "RPM_SIMULATOR_MQTT_USERNAME": found.mqtt_device_username,
                "RPM_SIMULATOR_MQTT_PASSWORD": found.mqtt_device_password,
                # A server on these local services is a local one (rpm.settings.safety).
                "RPM_DEPLOYMENT": "local",
            }
            if found.mqtt_device_cert_port is not None:
                exports["RPM_MQTT_DEVICE_CA_DIR"] = str((root / DEVICE_CA_DIR).absolute())
                exports["RPM_MQTT_BROKER_PID_FILE"] = str(
                    (root / "mqtt" / "mosquitto.pid").absolute()
                )
            for key, value in exports.items():
                print(f"export {key}={shlex.quote(value)}")
        else:
            running = services.running()
            print("running" if running else "not running")
            return 0 if running else 1
        return 0


class Demo:
    """``rpm demo``: the whole system with a simulated patient fleet."""

    def add_parser(self, sub: Subparsers, data_dir: Path) -> None:
        p = sub.add_parser("demo", help="the whole system with a simulated patient fleet")
        p.add_argument("--dir", type=Path, default=data_dir)
        p.add_argument("--patients", type=int, default=200)
        p.add_argument("--days", type=float, default=3.0, help="simulated history to replay")
        p.add_argument("--seconds", type=float, default=45.0, help="wall time for the replay")
        p.add_argument("--port", type=int, default=8000, help="API port (a free one if taken)")
        p.add_argument(
            "--exit-after-replay",
            action="store_true",
            help="stop once the replay is done and the alerts' SMS went out",
        )
        p.add_argument(
            "--stop-services",
            action="store_true",
            help="also stop PostgreSQL and Mosquitto on exit",
        )

    def main(self, args: argparse.Namespace) -> int:
        from simulators.demo import DemoOptions, run_demo

        opts = DemoOptions(
            data_dir=args.dir,
            patients=args.patients,
            days=args.days,
            seconds=args.seconds,
            port=args.port,
            exit_after_replay=args.exit_after_replay,
            stop_services=args.stop_services,
        )
        return run(run_demo(opts))


class Simulate:
    """``rpm simulate``: a virtual fleet through the whole stack, reported against the truth."""

    def add_parser(self, sub: Subparsers, data_dir: Path) -> None:
        simulate.add_parser(sub, data_dir)

    def main(self, args: argparse.Namespace) -> int:
        sim = simulate.SimulateOptions.from_args(args)
        return run(simulate.run(args.dir, sim, port=args.port, stop_services=args.stop_services))


services = Services()
demo = Demo()
simulate_command = Simulate()
