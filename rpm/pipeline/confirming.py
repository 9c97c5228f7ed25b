"""The confirm-before-paging stage of the unit of work: feeds ``alerts.confirm.gate`` and
writes what it decides (confirmation rows, the patient's re-measure text)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from alerts.confirm import ConfirmRule, Gated, Pending, gate
from alerts.policy import EpisodeKey, Grouping
from rpm.domain import AcceptedReading, AlertCandidate, Severity
from rpm.storage import alerts as alert_store
from rpm.storage import confirmations as confirm_store
from rpm.storage import registry as device_store
from rpm.storage.pool import Conn
from rules import confirm as rule_confirm
from rules.engine import PatientContext
from rules.programs import RuleBook


def rules_of(
    book: RuleBook, contexts: Mapping[str, PatientContext]
) -> Callable[[str, str], ConfirmRule | None]:
    """Each patient's confirmation of a rule (their programs and overrides), cached."""
    cache: dict[tuple[str, str], ConfirmRule | None] = {}

    def lookup(patient_id: str, rule_id: str) -> ConfirmRule | None:
        key = (patient_id, rule_id)
        if key in cache:
            return cache[key]
        ctx = contexts.get(patient_id)
        spec = book.rule(rule_id, ctx.programs if ctx else ())
        found = None
        if spec is not None and spec.confirm is not None:
            # A stored override the program refuses: the defaults apply.
            with contextlib.suppress(ValueError):
                spec = spec.with_overrides((ctx.overrides.get(rule_id) if ctx else None) or {})
            assert spec.confirm is not None
            found = ConfirmRule(
                spec.id,
                spec.metric.value,
                timedelta(minutes=spec.confirm.minutes),
                spec.confirmed_severities,
                partial(rule_confirm.level, spec),
                partial(rule_confirm.show, spec),
            )
        cache[key] = found
        return found

    return lookup


async def run_gate(
    conn: Conn,
    book: RuleBook,
    grouping: Grouping,
    candidates: Sequence[AlertCandidate],
    new: Sequence[AcceptedReading],
    contexts: Mapping[str, PatientContext],
) -> Gated | None:
    """Hold and decide confirmations for one batch; None when none is concerned."""
    confirming = [r for p in book.programs.values() for r in p.rules if r.confirm]
    if not confirming:
        return None
    # Only a reading of a confirmed metric, or a candidate, can decide a waiting one: a
    # batch of other readings costs no query.
    metrics = {r.metric for r in confirming}
    if not candidates and not any(a.reading.metric in metrics for a in new):
        return None
    ids = {r.id for r in confirming}
    held = [c for c in candidates if c.rule_id in ids]
    patients = {c.patient_id for c in candidates} | {a.patient_id for a in new}
    pending = await confirm_store.pending_for(conn, patients)
    if not held and not pending:
        return None
    missing = ({c.patient_id for c in held} | {k[0] for k in pending}) - set(contexts)
    if missing:
        contexts = {**contexts, **await device_store.patient_contexts(conn, missing)}
    rules = rules_of(book, contexts)
    # The readings that can decide: within the window after each held first reading and
    # each waiting one (the batch's are stored already).
    wants: list[tuple[str, str, datetime, datetime]] = []
    for c in held:
        rule = rules(c.patient_id, c.rule_id)
        if rule is not None:
            wants.append((c.patient_id, rule.metric, c.measured_at, c.measured_at + rule.window))
    for p in pending.values():
        rule = rules(p.candidate.patient_id, p.candidate.rule_id)
        if rule is not None:
            wants.append((p.key[0], rule.metric, p.measured_at, p.deadline))
    readings = await confirm_store.readings_between(conn, wants)
    keys = set(grouping.keys(candidates)) | set(pending)
    unresolved = await alert_store.open_episodes(conn, keys)
    values: dict[UUID, Mapping[str, float]] = {a.reading.uid: a.reading.values for a in new}
    return gate(candidates, readings, pending, set(unresolved), rules, values, grouping)


def remeasure_item(p: Pending, confirmation_id: int) -> tuple[str, str, dict[str, Any]]:
    """The patient's text: rest, then measure again within the window."""
    c = p.candidate
    minutes = round((p.deadline - p.measured_at).total_seconds() / 60)
    return (
        "sms",
        f"sms:confirm:{confirmation_id}:remeasure",
        {
            "recipient": "patient",
            "patient_id": c.patient_id,
            "template": "remeasure",
            "rule_id": c.rule_id,
            "severity": c.severity.name,
            # As urgent as the alert it may become: a high one is asked for at night too.
            "urgent": c.severity >= Severity.HIGH,
            "context": {"minutes": minutes, "confirmation_id": confirmation_id},
        },
    )


async def record(
    conn: Conn, gated: Gated, alert_ids: Mapping[EpisodeKey, int]
) -> list[tuple[str, str, dict[str, Any]]]:
    """Write the confirmations opened and ended; the re-measure texts to queue."""
    ids = await confirm_store.open_many(conn, gated.opened)
    await confirm_store.close_many(conn, gated.closed, alert_ids)
    return [remeasure_item(p, i) for p, i in zip(gated.opened, ids, strict=True)]
