"""Alert policy: rules propose candidates, the policy decides what happens. Pure.

One open episode per patient and rule: a candidate for a rule that already has an
open (or acknowledged) episode escalates it when more severe, otherwise it is
recorded as a recurrence. A new episode notifies the patient by SMS and starts the
escalation timer (``alerts.escalation``); a more severe one re-times it, or starts a
new round when it re-opens an acknowledged episode.

Snoozes are per patient and rule (alert kind), up to a severity: a candidate of a
snoozed kind at or below that severity is recorded as usual but notifies nobody and
starts no escalation, and the decision says why. A more severe candidate breaks
through. An episode that opened while snoozed stays silent until the first candidate
that is not snoozed, which then notifies and starts the escalation as an opening would.
Snoozing one rule never silences another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from rpm.domain import AlertCandidate, Severity
from rpm.domain.errors import SnoozeTooLong

from .lifecycle import Action, AlertState, next_state


@dataclass(frozen=True, slots=True)
class Episode:
    """An alert episode that is not resolved."""

    alert_id: int
    patient_id: str
    rule_id: str
    severity: Severity
    state: AlertState
    # Open, but it opened (or re-opened) while snoozed: nobody has been told yet.
    silenced: bool = False


@dataclass(frozen=True, slots=True)
class Snooze:
    """Quiet for one patient's alerts of one rule, up to a severity, until a time."""

    patient_id: str
    rule_id: str
    until: datetime
    max_severity: Severity
    actor: str

    def silences(self, severity: Severity) -> bool:
        """True when an alert of ``severity`` stays quiet while the snooze is in force."""
        return severity <= self.max_severity

    def in_force(self, at: datetime) -> bool:
        return at < self.until

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


EpisodeKey = tuple[str, str]


def decide(
    candidates: Iterable[AlertCandidate],
    episodes: Mapping[EpisodeKey, Episode],
    snoozes: Mapping[EpisodeKey, Snooze] | None = None,
) -> list[Decision]:
    """Decide, in order, what each candidate does to the episodes of its patient and rule.

    ``snoozes`` are the snoozes in force now. Candidates of one batch for the same patient
    and rule fold into one episode (a more severe one escalates it).
    """
    snoozes = snoozes or {}
    current: dict[EpisodeKey, Episode] = dict(episodes)
    opened: set[EpisodeKey] = set()  # opened by this batch: not written yet
    decisions: list[Decision] = []
    for cand in candidates:
        key = (cand.patient_id, cand.rule_id)
        snooze = snoozes.get(key)
        quiet = snooze is not None and snooze.silences(cand.severity)
        why = snooze.why if snooze is not None and quiet else None
        episode = current.get(key)
        if episode is None:
            state = next_state(None, Action.OPEN)
            decisions.append(Decision(Action.OPEN, cand, None, state, not quiet, not quiet, why))
            current[key] = Episode(0, cand.patient_id, cand.rule_id, cand.severity, state, quiet)
            opened.add(key)
            continue
        written = None if key in opened else episode
        if cand.severity > episode.severity:
            new_state = next_state(episode.state, Action.ESCALATE)
            reopened = episode.state is not AlertState.OPEN
            # Breaking through a silent episode tells the patient, as its opening would have.
            notify = episode.silenced and not quiet
            silenced = quiet and (reopened or episode.silenced)
            decisions.append(
                Decision(Action.ESCALATE, cand, written, new_state, notify, not quiet, why)
            )
            current[key] = Episode(
                episode.alert_id, cand.patient_id, cand.rule_id, cand.severity, new_state, silenced
            )
            continue
        new_state = next_state(episode.state, Action.RECUR)
        live = episode.silenced and not quiet  # the snooze is over and the rule still fires
        decisions.append(
            Decision(
                Action.RECUR,
                cand,
                written,
                new_state,
                live,
                live,
                why if episode.silenced else None,
            )
        )
        if live:
            current[key] = Episode(
                episode.alert_id, cand.patient_id, cand.rule_id, episode.severity, new_state
            )
    return decisions
