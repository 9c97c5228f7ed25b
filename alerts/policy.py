"""Alert policy: rules propose candidates, the policy decides what happens. Pure.

One episode per clinical event: candidates are sorted into episodes by their episode key,
(patient, group). A rule's group is data (``group`` in the rule program; by default the
rule's own id); a rule marked ``joins_reading`` (a composite score such as NEWS2) joins
the episode of another rule that fired on the same reading, so one low blood pressure is
one episode listing both rules. A candidate for an episode that is unresolved escalates
it when more severe (its rule becomes the leading one), adds its rule to the episode's
contributions when the rule is new there (``join``), and otherwise is recorded as a
recurrence. A new episode notifies the patient by SMS and starts the escalation timer
(``alerts.escalation``); a more severe one re-times it, or starts a new round when it
re-opens an acknowledged episode.

Measured time decides, not arrival: a candidate is compared with the episode's
resolution, acknowledgement and snoozes by the time its reading was measured.

- Measured before an episode of its key was resolved (``measured_at < resolved_at``), it
  is late evidence of that episode: recorded on it (``late_evidence``), opening nothing,
  notifying nobody, starting no escalation. Measured at or after the resolution, it opens
  a new episode. A reading measured at the very instant of the resolution opens one: the
  nurse who resolved cannot have seen it.
- Measured before the acknowledgement, a more severe candidate raises the episode's
  severity as late evidence but neither re-opens it nor re-times its escalation; in time it
  would have escalated the episode before the nurse acknowledged it.
- Snoozes are windows per patient and episode group, ``[since, until)``, up to a severity:
  a candidate measured inside one, at or below its severity, is recorded as usual but
  notifies nobody and starts no escalation, and the decision says why; whenever it arrives.
  A more severe candidate breaks through. An episode that opened while snoozed stays silent
  until the first candidate that is not snoozed, which then notifies and starts the
  escalation as an opening would. Snoozing one group never silences another.

So any delivery order of the same candidates, with the same nurse actions at the same
times, ends in the same episodes (``tests/test_alert_policy.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Protocol
from uuid import UUID

from rpm.domain import AlertCandidate, Severity
from rpm.domain.errors import SnoozeTooLong

from .lifecycle import Action, AlertState, next_state


@dataclass(frozen=True, slots=True)
class Episode:
    """An alert episode: unresolved, or resolved recently enough for late evidence."""

    alert_id: int
    patient_id: str
    rule_id: str  # the leading rule: the most severe contributor (the first on a tie)
    severity: Severity
    state: AlertState
    # Open, but it opened (or re-opened) while snoozed: nobody has been told yet.
    silenced: bool = False
    group: str | None = None  # the episode's group key (None: its rule id)
    rules: tuple[str, ...] = ()  # every contributing rule (empty: only ``rule_id``)
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None

    @property
    def key(self) -> EpisodeKey:
        return (self.patient_id, self.group or self.rule_id)

    @property
    def contributors(self) -> tuple[str, ...]:
        return self.rules or (self.rule_id,)


@dataclass(frozen=True, slots=True)
class Snooze:
    """Quiet for one patient's alerts of one episode group (``rule_id``: a rule id, or the
    group key of grouped rules), up to a severity, from ``since`` until ``until``."""

    patient_id: str
    rule_id: str
    until: datetime
    max_severity: Severity
    actor: str
    since: datetime | None = None  # when the window began (None: before anything we compare)

    def silences(self, severity: Severity) -> bool:
        """True when an alert of ``severity`` stays quiet while the snooze is in force."""
        return severity <= self.max_severity

    def in_force(self, at: datetime) -> bool:
        return at < self.until

    def covers(self, at: datetime) -> bool:
        """True when a reading measured at ``at`` falls in the window ``[since, until)``."""
        return (self.since is None or self.since <= at) and at < self.until

    @property
    def why(self) -> str:
        return f"snoozed until {self.until.isoformat(timespec='minutes')} by {self.actor}"


_DEFAULT_CAPS = MappingProxyType(
    {
        Severity.CRITICAL: timedelta(minutes=30),
        Severity.HIGH: timedelta(hours=4),
        Severity.MEDIUM: timedelta(hours=24),
        Severity.LOW: timedelta(hours=24),
    }
)


@dataclass(frozen=True, slots=True)
class SnoozeCaps:
    """The longest snooze allowed per severity (``RPM_SNOOZE_CAP_MIN``)."""

    caps: Mapping[Severity, timedelta] = field(default_factory=lambda: _DEFAULT_CAPS)

    def cap(self, severity: Severity) -> timedelta:
        return self.caps.get(severity, _DEFAULT_CAPS[severity])

    def check(self, severity: Severity, duration: timedelta) -> None:
        """Raise ``SnoozeTooLong`` when ``duration`` exceeds the cap of ``severity``."""
        cap = self.cap(severity)
        if duration > cap:
            minutes = int(cap.total_seconds() // 60)
            raise SnoozeTooLong(
                f"a {severity.name.lower()} alert may be snoozed for at most {minutes} min"
            )


EpisodeKey = tuple[str, str]  # (patient id, group key); the group key of a lone rule is its id


class GroupedRule(Protocol):
    """What the policy reads of a rule spec to group its candidates."""

    @property
    def id(self) -> str: ...
    @property
    def group(self) -> str | None: ...
    @property
    def joins_reading(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Grouping:
    """Which episode a rule's candidates belong to (the rule programs' ``group`` and
    ``joins_reading``). The empty grouping is one episode per patient and rule."""

    groups: Mapping[str, str] = field(default_factory=dict)  # rule id -> group key
    joiners: frozenset[str] = frozenset()  # rules that join another's episode on a reading

    @classmethod
    def of(cls, rules: Iterable[GroupedRule]) -> Grouping:
        groups: dict[str, str] = {}
        joiners: set[str] = set()
        for r in rules:
            if r.group:
                groups[r.id] = r.group
            if r.joins_reading:
                joiners.add(r.id)
        return cls(MappingProxyType(groups), frozenset(joiners))

    def group(self, rule_id: str) -> str:
        return self.groups.get(rule_id, rule_id)

    def keys(self, candidates: Sequence[AlertCandidate]) -> list[EpisodeKey]:
        """The episode key of each candidate, in order.

        A joining rule's candidate takes the key of the most severe other candidate of the
        same patient and reading (on a tie, the smallest group key), else its own.
        """
        keys = [(c.patient_id, self.group(c.rule_id)) for c in candidates]
        joining = {c.patient_id for c in candidates if c.rule_id in self.joiners}
        if not joining:
            return keys
        lead: dict[tuple[str, UUID], tuple[Severity, str]] = {}
        for c, (_, g) in zip(candidates, keys, strict=True):
            if c.patient_id not in joining or c.rule_id in self.joiners:
                continue
            uid = c.reading_uid
            if uid is None:
                continue
            best = lead.get((c.patient_id, uid))
            if best is None or (c.severity, best[1]) > (best[0], g):
                lead[(c.patient_id, uid)] = (c.severity, g)
        for i, c in enumerate(candidates):
            if c.rule_id in self.joiners and c.reading_uid is not None:
                hit = lead.get((c.patient_id, c.reading_uid))
                if hit is not None:
                    keys[i] = (c.patient_id, hit[1])
        return keys


UNGROUPED = Grouping()


def earliest_by_key(
    candidates: Sequence[AlertCandidate], grouping: Grouping = UNGROUPED
) -> dict[EpisodeKey, datetime]:
    """The earliest measured time of the candidates of each episode key: how far back the
    resolved episodes and snooze windows that ``decide`` needs reach."""
    out: dict[EpisodeKey, datetime] = {}
    for c, key in zip(candidates, grouping.keys(candidates), strict=True):
        t = out.get(key)
        if t is None or c.measured_at < t:
            out[key] = c.measured_at
    return out


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    candidate: AlertCandidate
    episode: Episode | None  # None: the episode opens in this batch (not written yet)
    new_state: AlertState
    notify_patient: bool
    # Arm the escalation timer (or re-time it for the new severity); False while snoozed.
    start_escalation: bool = False
    # Why nobody was told (a snooze), for the audit; None when nothing was held back.
    suppressed: str | None = None
    key: EpisodeKey | None = None  # the episode's key (None: the candidate's own rule)
    joins: bool = False  # the candidate's rule is new among the episode's contributors
    late: str | None = None  # late evidence: why (measured before a resolution or an ack)

    @property
    def episode_key(self) -> EpisodeKey:
        return self.key or (self.candidate.patient_id, self.candidate.rule_id)


def _stamp(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _windows(
    snoozes: Mapping[EpisodeKey, Snooze | Sequence[Snooze]], key: EpisodeKey
) -> Sequence[Snooze]:
    found = snoozes.get(key)
    if found is None:
        return ()
    return (found,) if isinstance(found, Snooze) else found


def _home(resolved: Sequence[Episode], at: datetime) -> Episode | None:
    """The resolved episode a reading measured at ``at`` belongs to: the first resolved
    after it (``resolved`` sorted by resolution), if any."""
    for e in resolved:
        if e.resolved_at is not None and at < e.resolved_at:
            return e
    return None


def _with(episode: Episode, cand: AlertCandidate, **changes: object) -> Episode:
    """``episode`` with ``cand``'s rule among its contributors (leading when more severe)."""
    rules = episode.contributors
    if cand.rule_id not in rules:
        rules = (*rules, cand.rule_id)
    if cand.severity > episode.severity:
        changes.setdefault("severity", cand.severity)
        changes.setdefault("rule_id", cand.rule_id)
    return replace(episode, rules=rules, **changes)  # type: ignore[arg-type]


def decide(
    candidates: Iterable[AlertCandidate],
    episodes: Mapping[EpisodeKey, Episode],
    snoozes: Mapping[EpisodeKey, Snooze | Sequence[Snooze]] | None = None,
    *,
    resolved: Mapping[EpisodeKey, Sequence[Episode]] | None = None,
    grouping: Grouping = UNGROUPED,
) -> list[Decision]:
    """Decide, in measured-time order, what each candidate does to the episodes of its key.

    ``episodes``: the unresolved episode of each key. ``resolved``: the episodes of each key
    resolved after the earliest candidate of that key was measured (``earliest_by_key``).
    ``snoozes``: the snooze windows of each key that end after that time (a single
    ``Snooze`` stands for one window). Candidates of one batch for the same key fold into
    one episode (a more severe one escalates it).
    """
    snoozes = snoozes or {}
    resolved = resolved or {}
    # Measured-time order; at one instant the most severe first and joining rules last, so
    # an episode opens on the rule that leads it (and its SMS speaks of that rule).
    ordered = sorted(
        candidates,
        key=lambda c: (c.measured_at, c.rule_id in grouping.joiners, -int(c.severity)),
    )
    keys = grouping.keys(ordered)
    current: dict[EpisodeKey, Episode] = dict(episodes)
    past: dict[EpisodeKey, list[Episode]] = {
        k: sorted(v, key=lambda e: e.resolved_at or e.alert_id) for k, v in resolved.items()
    }
    opened: set[EpisodeKey] = set()  # opened by this batch: not written yet
    decisions: list[Decision] = []
    for cand, key in zip(ordered, keys, strict=True):
        at = cand.measured_at
        home = _home(past.get(key, ()), at)
        if home is not None:
            assert home.resolved_at is not None
            before = f"measured {_stamp(at)}, before the resolution at {_stamp(home.resolved_at)}"
            decisions.append(
                Decision(
                    Action.LATE_EVIDENCE,
                    cand,
                    home,
                    next_state(home.state, Action.LATE_EVIDENCE),
                    False,
                    key=key,
                    joins=cand.rule_id not in home.contributors,
                    late=before,
                )
            )
            past[key] = [_with(e, cand) if e is home else e for e in past[key]]
            continue
        quiet_by = next(
            (s for s in _windows(snoozes, key) if s.covers(at) and s.silences(cand.severity)),
            None,
        )
        quiet = quiet_by is not None
        why = quiet_by.why if quiet_by is not None else None
        episode = current.get(key)
        if episode is None:
            state = next_state(None, Action.OPEN)
            decisions.append(
                Decision(Action.OPEN, cand, None, state, not quiet, not quiet, why, key=key)
            )
            current[key] = Episode(
                0, cand.patient_id, cand.rule_id, cand.severity, state, quiet, key[1]
            )
            opened.add(key)
            continue
        written = None if key in opened else episode
        joins = cand.rule_id not in episode.contributors
        acked = episode.acknowledged_at
        if cand.severity > episode.severity and acked is not None and at < acked:
            # In time, it would have escalated the episode before the nurse acknowledged it.
            late = f"measured {_stamp(at)}, before the acknowledgement at {_stamp(acked)}"
            decisions.append(
                Decision(
                    Action.LATE_EVIDENCE,
                    cand,
                    written,
                    next_state(episode.state, Action.LATE_EVIDENCE),
                    False,
                    key=key,
                    joins=joins,
                    late=late,
                )
            )
            current[key] = _with(episode, cand)
            continue
        if cand.severity > episode.severity:
            new_state = next_state(episode.state, Action.ESCALATE)
            reopened = episode.state is not AlertState.OPEN
            # Breaking through a silent episode tells the patient, as its opening would have.
            notify = episode.silenced and not quiet
            silenced = quiet and (reopened or episode.silenced)
            decisions.append(
                Decision(
                    Action.ESCALATE,
                    cand,
                    written,
                    new_state,
                    notify,
                    not quiet,
                    why,
                    key=key,
                    joins=joins,
                )
            )
            current[key] = _with(episode, cand, state=new_state, silenced=silenced)
            continue
        action = Action.JOIN if joins else Action.RECUR
        new_state = next_state(episode.state, action)
        live = episode.silenced and not quiet  # the snooze is over and the rule still fires
        decisions.append(
            Decision(
                action,
                cand,
                written,
                new_state,
                live,
                live,
                why if episode.silenced else None,
                key=key,
                joins=joins,
            )
        )
        if live or joins:
            current[key] = _with(
                episode, cand, state=new_state, silenced=episode.silenced and not live
            )
    return decisions
