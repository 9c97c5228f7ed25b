"""The system accounts the servers run as when we are root, and what they may reach."""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rpm.domain.errors import LocalServicesError


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def account(name: str) -> Account | None:
    """The system user ``name``, or None when there is none."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    groups = frozenset(os.getgrouplist(name, entry.pw_gid))
    return Account(name, entry.pw_uid, entry.pw_gid, groups)


def service_account(name: str, *, required: bool) -> Account | None:
    """The account a server must run as when we are root; None when not root."""
    if os.geteuid() != 0:
        return None
    found = account(name)
    if found is None and required:
        raise LocalServicesError(
            f"running as root needs the {name!r} system user (install the package, "
            "or run as an ordinary user)"
        )
    return found


def name_of(who: Account | None) -> str | None:
    """The user name to run a command as (None: as ourselves)."""
    return None if who is None else who.name


def _can_search(st: os.stat_result, who: Account) -> bool:
    if st.st_uid == who.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in who.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def grant_search(path: Path, who: Account, log: Callable[[str], None]) -> None:
    """Add o+x to each directory from ``path`` up that ``who`` cannot search."""
    for directory in [path, *path.parents]:
        st = directory.stat()
        if not _can_search(st, who):
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            log(f"made {directory} searchable (o+x) for the {who.name} user")


def make_private_dir(path: Path, owner: Account | None) -> None:
    """A 0700 directory owned by ``owner`` (or us); one someone else owns is refused."""
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    uid = os.geteuid() if owner is None else owner.uid
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (uid, os.geteuid()):
        raise LocalServicesError(f"{path} exists and is not ours; remove it")
    chown(path, owner)
    path.chmod(0o700)


def chown(path: Path, owner: Account | None) -> None:
    """Give ``path`` to ``owner``; None leaves it ours."""
    if owner is not None:
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
