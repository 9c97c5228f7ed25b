"""The layers (docs/architecture.md): import-linter's contracts in pyproject.toml hold, they
name every part of the service, and ``rpm serve`` loads no development tooling.

Only the test that reads pyproject.toml is pure; the others start processes (lint-imports,
a Python importing the whole server, the installed ``rpm`` script)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def test_contracts_hold() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.pure
def test_pure_cores_are_forbidden_every_part_of_the_service() -> None:
    """A new module or package in rpm/ must be placed in a layer; the pure cores' contract
    must forbid it too unless it is the domain."""
    children = sorted(
        p.stem if p.is_file() else p.name
        for p in (ROOT / "rpm").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    )
    (cores,) = [c for c in _contracts() if c["name"] == "The pure cores import only the domain"]
    forbidden = cores["forbidden_modules"]
    assert isinstance(forbidden, list)
    assert sorted(m for m in forbidden if m.startswith("rpm.")) == [
        f"rpm.{c}" for c in children if c != "domain"
    ]


def test_rpm_serve_loads_no_development_tooling() -> None:
    """Building ``rpm serve``'s command line and importing what it starts (the server, the
    API, the workers) loads no simulator, plotting library or progress bar."""
    script = (
        "import sys\n"
        "from rpm import cli\n"
        "try:\n"
        "    cli.main(['serve', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "import rpm.server, rpm.api.app, rpm.workers.sms_outbox, rpm.workers.alert_timers\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(roots & {'simulators', 'matplotlib', 'tqdm'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


@pytest.mark.parametrize("command", ["services", "demo", "simulate"])
def test_the_development_commands_load_as_plugins(command: str) -> None:
    """``rpm <command> --help`` through the installed ``rpm`` script: the entry point is
    declared, the plug-in imports and adds its own options."""
    rpm = Path(sys.executable).with_name("rpm")
    done = subprocess.run(
        [str(rpm), command, "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"usage: rpm {command}" in done.stdout
    assert "--dir" in done.stdout  # the plug-in's own option, not the placeholder's
