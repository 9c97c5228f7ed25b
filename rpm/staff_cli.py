"""``rpm staff add``: dashboard accounts, and the demo's nurse.

A password is never a command-line argument (other users of the machine can read those in
the process list, and shells keep them in history): it comes from ``--password-file``, else
the ``RPM_STAFF_PASSWORD`` environment variable, else the terminal (asked twice).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import secrets
import sys
from pathlib import Path

import asyncpg

from rpm.auth import ROLES, STAFF_ID, check_new_password, hash_password
from rpm.domain.errors import StaffExists
from rpm.settings import Settings
from rpm.settings.local_option import add_local_option
from rpm.storage import staff, staff_auth
from rpm.storage.pool import Conn, connect

PASSWORD_ENV = "RPM_STAFF_PASSWORD"  # noqa: S105 - the variable's name, not a password
E164 = r"^\+[1-9][0-9]{6,14}$"
DEMO_NURSE_ID = "demo.nurse"
DEMO_TEAM = "demo"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], local: Path) -> None:
    """Add ``staff add`` to the ``rpm`` command's subcommands."""
    p = sub.add_parser("staff", help="dashboard staff accounts")
    staff = p.add_subparsers(dest="staff_command", required=True)
    p = staff.add_parser(
        "add",
        help="create a nurse or admin who can sign in to the dashboard",
        description="Create a dashboard account. The password comes from --password-file, "
        f"else ${PASSWORD_ENV}, else the terminal; never from the command line. It needs at "
        "least 15 characters.",
    )
    p.add_argument("--id", dest="staff_id", required=True, help="sign-in name, e.g. jo.smith")
    p.add_argument("--name", required=True, help="name shown on the dashboard")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--phone", help="E.164 number for escalation SMS, e.g. +15551234567")
    p.add_argument("--password-file", type=Path, help="read the password from this file")
    p.add_argument("--replace", action="store_true", help="overwrite an existing account")
    add_local_option(p, local)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``rpm staff add``; 0 when the account was stored, 2 for bad input."""
    problem = _check(args)
    if problem:
        print(f"rpm staff add: {problem}", file=sys.stderr)
        return 2
    try:
        password = _password(args.password_file)
        check_new_password(password)
    except ValueError as exc:
        print(f"rpm staff add: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_add(args, settings, hash_password(password)))


def _check(args: argparse.Namespace) -> str | None:
    if not re.fullmatch(STAFF_ID, args.staff_id):
        return "--id: lowercase letters, digits, '.', '_' and '-', at most 64 characters"
    if not 1 <= len(args.name.strip()) <= 200:
        return "--name: 1 to 200 characters"
    if args.phone is not None and not re.fullmatch(E164, args.phone):
        return "--phone: an E.164 number such as +15551234567"
    return None


def _password(path: Path | None) -> str:
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read the password file: {exc.strerror}") from None
        return text.rstrip("\r\n")
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise ValueError(
            f"no terminal to ask for the password: use --password-file or ${PASSWORD_ENV}"
        )
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise ValueError("the two passwords differ")
    return first


async def _add(args: argparse.Namespace, settings: Settings, password_hash: str) -> int:
    conn = await connect(settings.database.url.get_secret_value())
    try:
        await staff_auth.add_staff(
            conn,
            staff_id=args.staff_id,
            display_name=args.name.strip(),
            role=args.role,
            password_hash=password_hash,
            phone=args.phone,
            replace=args.replace,
        )
    except StaffExists:
        print(f"rpm staff add: {args.staff_id} exists (--replace overwrites it)", file=sys.stderr)
        return 1
    except asyncpg.UndefinedTableError:
        print("rpm staff add: the database is not migrated: run `rpm migrate`", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    print(f"{args.role} {args.staff_id} can sign in at /dashboard/sign-in")
    return 0


async def demo_nurse(conn: Conn) -> tuple[str, str]:
    """(sign-in name, password) of the demo's nurse; a new password on every start.

    Nurses see only their care teams' patients: the nurse joins team ``demo``, and every
    patient enrolled so far without a team is put in it (call this after seeding)."""
    password = secrets.token_urlsafe(12)  # 16 characters, 96 random bits
    await staff_auth.add_staff(
        conn,
        staff_id=DEMO_NURSE_ID,
        display_name="Demo Nurse",
        role="nurse",
        password_hash=await asyncio.to_thread(hash_password, password),
        phone=None,
        replace=True,
    )
    await staff.create_team(conn, DEMO_TEAM, "Demo care team")
    await staff.add_member(conn, DEMO_TEAM, DEMO_NURSE_ID)
    await staff.adopt_unassigned_patients(conn, DEMO_TEAM)
    return DEMO_NURSE_ID, password
