"""The ``--local [DIR]`` option of the commands: settings from the local services started in
``DIR`` (``rpm services start``; ``rpm.local_endpoints``) instead of the environment."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_local_option(parser: argparse.ArgumentParser, data_dir: Path) -> None:
    """``--local`` alone means ``data_dir``; absent, the settings come from the environment."""
    parser.add_argument(
        "--local",
        type=Path,
        nargs="?",
        const=data_dir,
        default=None,
        help=f"use the local services started in this directory (default {data_dir})",
    )
