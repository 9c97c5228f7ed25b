"""The backtest's episodes: candidates through the alert policy against an in-memory table
of open episodes, with a modelled nurse and auto-resolve (``rpm.backtest.replay``). Pure."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import groupby

from alerts.lifecycle import Action
from alerts.policy import Decision, Episode, EpisodeKey, Grouping, decide
from rpm.domain import AlertCandidate
from rules.engine import Clear

from .burden import Alert, Options


def _at(c: AlertCandidate) -> datetime:
    return c.measured_at


class Ledger:
    """Episodes as the alert policy keeps them, under one grouping: candidates in, the
    episodes opened in the period out. A nurse resolves each ``resolve_after`` after it
    opened; a rule with ``auto_resolve_after_hours`` resolves its (leading) episode once
    its condition has been clear that long."""

    def __init__(
        self, grouping: Grouping, options: Options, auto: Mapping[EpisodeKey, timedelta]
    ) -> None:
        self._grouping = grouping
        self._options = options
        self._auto = auto  # (patient, rule) -> auto-resolve delay, filled by the replay
        self._open: dict[EpisodeKey, Episode] = {}
        # Resolutions to come: (when, order, alert id, key, the clear an auto-resolve awaits).
        self._expiry: list[tuple[datetime, int, int, EpisodeKey, datetime | None]] = []
        self._order = itertools.count()
        self._cleared: dict[EpisodeKey, datetime] = {}  # open episodes seen to clear
        self._alerts: dict[int, Alert] = {}  # counted episodes by id
        self._next_id = 1

    def open_keys(self, now: datetime) -> set[EpisodeKey]:
        """The keys of the episodes still open at ``now`` (the modelled nurse's included)."""
        self._expire(now)
        return set(self._open)

    def counted(self) -> tuple[Alert, ...]:
        return tuple(self._alerts[i] for i in sorted(self._alerts))

    def decide(
        self, candidates: list[AlertCandidate], clears: list[Clear], start: datetime
    ) -> None:
        """Candidates and clears sorted by measured time; those at one instant: one batch."""
        done = 0
        for at, group in groupby(candidates, key=_at):
            while done < len(clears) and clears[done].measured_at < at:
                self._clear(clears[done])
                done += 1
            self._expire(at)
            batch = list(group)
            keys = set(self._grouping.keys(batch))
            current = {k: self._open[k] for k in keys if k in self._open}
            for d in decide(batch, current, grouping=self._grouping):
                self._apply(d, at, at >= start)
        for clear in clears[done:]:
            self._clear(clear)

    def _resolve_at(
        self, at: datetime, alert_id: int, key: EpisodeKey, cleared: datetime | None
    ) -> None:
        heapq.heappush(self._expiry, (at, next(self._order), alert_id, key, cleared))

    def _expire(self, now: datetime) -> None:
        """Resolve what the modelled nurse, or a rule's auto-resolve, resolved by ``now``."""
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, _, alert_id, key, cleared = heapq.heappop(heap)
            episode = self._open.get(key)
            if episode is None or episode.alert_id != alert_id:
                continue  # resolved already
            if cleared is not None and self._cleared.get(key) != cleared:
                continue  # the condition came back after that clear
            del self._open[key]
            self._cleared.pop(key, None)
            alert = self._alerts.get(alert_id)
            if cleared is not None and alert is not None:
                self._alerts[alert_id] = replace(alert, auto_resolved=True)

    def _clear(self, clear: Clear) -> None:
        """The newest reading shows the leading rule's condition is over: production marks
        the episode."""
        self._expire(clear.measured_at)
        key = (clear.patient_id, self._grouping.group(clear.rule_id))
        episode = self._open.get(key)
        if episode is None or episode.rule_id != clear.rule_id or key in self._cleared:
            return
        self._cleared[key] = clear.measured_at
        delay = self._auto.get((clear.patient_id, clear.rule_id))
        if delay is not None:
            self._resolve_at(clear.measured_at + delay, episode.alert_id, key, clear.measured_at)

    def _apply(self, d: Decision, at: datetime, counted: bool) -> None:
        c = d.candidate
        key = d.episode_key
        if d.action is Action.OPEN:
            alert_id = self._next_id
            self._next_id += 1
            self._open[key] = Episode(
                alert_id, c.patient_id, c.rule_id, c.severity, d.new_state, group=key[1]
            )
            self._cleared.pop(key, None)
            self._resolve_at(at + self._options.resolve_after, alert_id, key, None)
            if counted:
                self._alerts[alert_id] = Alert(
                    alert_id, c.patient_id, c.rule_id, at, c.severity, c.severity, 0, 0
                )
            return
        # A recurrence in the batch that opened the episode carries no episode yet.
        episode = d.episode or self._open[key]
        self._cleared.pop(key, None)  # the condition is back: an auto-resolve starts over
        alert = self._alerts.get(episode.alert_id)
        rules = episode.contributors
        if d.joins:
            rules = (*rules, c.rule_id)
            self._open[key] = replace(episode, rules=rules)
        if d.action is Action.ESCALATE:
            self._open[key] = Episode(
                episode.alert_id,
                c.patient_id,
                c.rule_id,
                c.severity,
                d.new_state,
                group=key[1],
                rules=rules,
            )
            if alert is not None:
                self._alerts[alert.alert_id] = replace(
                    alert,
                    rule_id=c.rule_id,
                    severity=max(alert.severity, c.severity),
                    escalations=alert.escalations + 1,
                )
        elif alert is not None:
            self._alerts[alert.alert_id] = replace(alert, recurrences=alert.recurrences + 1)
