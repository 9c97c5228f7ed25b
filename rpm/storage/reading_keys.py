"""Finding a reading by its uid, which is not stored (migration 0039, rpm.domain.reading_ids)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from rpm.domain import key_of_uid


def key_args(uid: str | UUID) -> tuple[int, str, datetime] | None:
    """The parameters of ``by_uid_filter`` for ``uid``: None when no reading can have it."""
    key = key_of_uid(uid)
    return None if key is None else (key.device_hash, key.metric, key.measured_at)


def by_uid_filter(table: str, first: int) -> str:
    """SQL true of the reading of a uid, given ``key_args`` as parameters ``$first``..``+2``.

    The uid is not stored (migration 0039): its device is found by hash (index
    ``devices_hash``), then the reading by primary key."""
    d, m, t = first, first + 1, first + 2
    device = f"(SELECT id FROM devices WHERE rpm_device_hash(id) = ${d}::bigint)"  # noqa: S608
    key = f"{table}.metric = ${m}::rpm_metric AND {table}.measured_at = ${t}::timestamptz"
    return f"{table}.device_id IN {device} AND {key}"
