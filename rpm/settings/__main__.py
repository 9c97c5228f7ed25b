"""``python -m rpm.settings``: print the settings table; ``--write FILE`` renews it in FILE."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .table import END, START, render, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpm.settings", description=__doc__)
    parser.add_argument(
        "--write",
        type=Path,
        metavar="FILE",
        help=f"replace what FILE holds between {START} and {END}",
    )
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(render())
        return 0
    changed = write(args.write)
    print(f"{args.write}: {'updated' if changed else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
