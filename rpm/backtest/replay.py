"""Backtest: replay readings through a fresh engine and the alert policy, count the alerts.

A care program tunes its alert burden here before it deploys a changed rule set. Pure,
like the engine and the policy: readings, patient contexts and options in, figures out
(``rpm.backtest.store`` reads the database or a CSV file and prints the report).

How the replay models production:

* readings go through one ``Engine`` in measured-time order, one window of ``step``
  (an hour by default) per engine step; the engine evaluates every reading at its own
  time against the history before it, so the window length does not change what fires;
* the missing-data timer runs at the end of every window (production runs it every few
  minutes) with the last reading times the replay has seen. Device heartbeats are not
  replayed, so a device counts as silent together with its data;
* candidates go through ``alerts.policy.decide`` in time order against an in-memory
  table of open episodes, one episode per clinical event (the programs' groups) as in
  production; the same candidates also go through the policy with one episode per rule,
  the count before grouping (``Burden.ungrouped``). A nurse is modelled as resolving
  each episode ``resolve_after`` after it opened; a condition that persists then alerts
  again, as in production. A rule with ``auto_resolve_after_hours`` resolves its
  episode by itself once the engine has seen the condition clear for that long (a
  recurrence in between starts it over);
* readings before ``start`` (the warm-up) fill the rules' windows and may open episodes
  that hold back alerts early in the period, but only episodes opened in
  ``[start, end)`` are counted.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from alerts.policy import UNGROUPED, EpisodeKey, Grouping
from rpm.domain import AcceptedReading, AlertCandidate, Metric
from rules.engine import Clear, Engine, PatientContext
from rules.kinds.missing import Silence
from rules.programs import RuleBook
from rules.spec import RuleSpec

from .burden import DAY, SEVERITIES, Alert, Burden, Comparison, Options, RuleBurden
from .confirming import ConfirmGate
from .ledger import Ledger

# A period in which the missing-data timer watches a patient (a device binding);
# open-ended when the end is None.
Span = tuple[datetime, datetime | None]

NO_HEARTBEATS = (
    "Device heartbeats are not replayed: a missing-data alert treats the device as silent "
    "together with its data (production tells a silent device from a patient who stopped "
    "measuring)."
)
WATCHED_FROM_FIRST = (
    "{n} patient(s) without device bindings in the input are watched by the missing-data "
    "timer from their first reading to the end of the period."
)


def _midnight(t: datetime) -> datetime:
    u = t.astimezone(UTC)
    return datetime(u.year, u.month, u.day, tzinfo=UTC)


def _at(c: AlertCandidate) -> datetime:
    return c.measured_at


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Overlapping or touching watch periods as one (sorted by start)."""
    out: list[Span] = []
    for since, until in sorted(spans, key=lambda s: s[0]):
        if out:
            last_since, last_until = out[-1]
            if last_until is None or since <= last_until:
                merged = None if last_until is None or until is None else max(last_until, until)
                out[-1] = (last_since, merged)
                continue
        out.append((since, until))
    return out


class Replay:
    """One rule set replayed over a stream of readings: ``feed`` in time order, ``finish``.

    The state (engine, open episodes, last reading times) is the replay's own; nothing
    outside it changes.
    """

    def __init__(self, book: RuleBook, options: Options | None = None) -> None:
        self.options = options or Options()
        self._book = book
        self._engine = Engine(book)
        self._start = self.options.start
        self._contexts: dict[str, PatientContext] = {}
        self._watch: dict[str, list[Span]] = {}
        self._window_end: datetime | None = None  # the open window is (end - step, end]
        self._pending: list[AcceptedReading] = []
        self._newest: datetime | None = None
        self._kept_newest: datetime | None = None
        self._first: dict[str, datetime] = {}
        self._last: dict[tuple[str, Metric], datetime] = {}
        self._missing: dict[str, tuple[tuple[Metric, float], ...]] = {}
        # The timer's schedule: when each patient's missing rules are next worth evaluating
        # (a heap with stale entries skipped), and patients whose readings moved it.
        self._timer: list[tuple[datetime, str]] = []
        self._due: dict[str, datetime] = {}
        self._moved: set[str] = set()
        self._in_play: dict[str, RuleSpec] = {}
        self._auto: dict[EpisodeKey, timedelta] = {}  # (patient, rule) -> auto-resolve delay
        # The policy twice over the same candidates: one episode per clinical event (the
        # programs' groups, as production), and one per rule (what grouping saves).
        rules = [r for p in book.programs.values() for r in p.rules]
        grouping = Grouping.of(rules)
        self._grouped = Ledger(grouping, self.options, self._auto)
        self._ungrouped = Ledger(UNGROUPED, self.options, self._auto)
        # Confirm before paging (alerts.confirm), and the episodes without it (what it saves).
        self._confirm = ConfirmGate(book, grouping, self._start)
        self._unconfirmed = Ledger(grouping, self.options, self._auto)
        self._proposed: Counter[str] = Counter()
        self._patients: set[str] = set()
        self._readings = 0
        self._after_end = 0
        self._finished = False

    @property
    def lookback(self) -> timedelta:
        """How much history before ``start`` the rules read: the warm-up worth loading."""
        return timedelta(seconds=self._engine.lookback_s())

    def feed(
        self,
        readings: Iterable[AcceptedReading],
        contexts: Mapping[str, PatientContext] | None = None,
        watch: Mapping[str, Iterable[Span]] | None = None,
    ) -> None:
        """Add readings that continue the stream in measured-time order.

        ``contexts`` and ``watch`` (device bindings) are those of patients new in this
        chunk; a patient without a context gets only the general program.
        """
        if self._finished:
            raise RuntimeError("this replay has finished")
        if contexts:
            self._contexts.update(contexts)
        for pid, spans in (watch or {}).items():
            self._watch[pid] = merge_spans(spans)
        end = self.options.end
        for a in readings:
            t = a.reading.measured_at
            if self._newest is not None and t < self._newest:
                raise ValueError(
                    f"readings must come in measured-time order: {t.isoformat()} "
                    f"after {self._newest.isoformat()}"
                )
            self._newest = t
            if end is not None and t >= end:
                self._after_end += 1
                continue
            self._kept_newest = t
            if self._window_end is None:
                self._begin(t)
            assert self._window_end is not None
            while t > self._window_end:
                self._close()
            self._pending.append(a)

    def finish(self) -> Burden:
        """Run the timer to the end of the period and count what the period opened."""
        if self._finished:
            raise RuntimeError("this replay has finished")
        self._finished = True
        if self._window_end is None or self._kept_newest is None or self._start is None:
            if self.options.start is None or self.options.end is None:
                raise ValueError("no readings to replay")
            return self._burden(self.options.start, self.options.end)
        end = self.options.end or _midnight(self._kept_newest) + DAY
        while self._pending or self._window_end < end:
            self._close()
        return self._burden(self._start, end)

    # --- the replay ----------------------------------------------------------------

    def _begin(self, t: datetime) -> None:
        if self._start is None:
            self._start = _midnight(t)
        self._confirm.start = self._start
        step = self.options.step
        # Windows are right-closed: the first one ends at or after t.
        k = -((self._start - t) // step)
        self._window_end = self._start + k * step

    def _close(self) -> None:
        """Step the open window's readings, run the timer at its end, apply the policy."""
        b = self._window_end
        assert b is not None
        assert self._start is not None
        batch, self._pending = self._pending, []
        candidates: list[AlertCandidate] = []
        clears: list[Clear] = []
        if batch:
            for a in batch:
                pid, t = a.patient_id, a.reading.measured_at
                if pid not in self._first:
                    self._first[pid] = t
                    self._meet(pid)
                self._last[(pid, a.reading.metric)] = t
                if pid in self._missing:
                    self._moved.add(pid)
                if t >= self._start:
                    self._readings += 1
                    self._patients.add(pid)
            stepped = self._engine.step(batch, self._contexts)
            candidates.extend(stepped.candidates)
            clears.extend(stepped.clears)
        end = self.options.end
        if end is None or b < end:  # in the warm-up too: its episodes hold back alerts
            candidates.extend(self._tick(b))
        keys = self._grouped.open_keys(min((c.measured_at for c in candidates), default=b))
        gated = self._confirm.step(batch, candidates, self._contexts, keys, b)
        if candidates or gated or clears:
            self._decide(gated, clears, candidates)
        self._window_end = b + self.options.step

    def _context(self, patient_id: str) -> PatientContext:
        return self._contexts.get(patient_id) or PatientContext(patient_id)

    def _meet(self, patient_id: str) -> None:
        plan = self._engine.plan(self._context(patient_id))
        for rule in plan.rules:
            self._in_play.setdefault(rule.id, rule)
            if rule.auto_resolve_after_hours is not None:
                self._auto[(patient_id, rule.id)] = timedelta(hours=rule.auto_resolve_after_hours)
        missing = tuple((r.metric, r.p("after_hours")) for r in plan.rules if r.kind == "missing")
        if missing:
            self._missing[patient_id] = missing

    def _watched(self, patient_id: str, now: datetime) -> tuple[datetime | None, datetime | None]:
        """Since when the timer watches the patient at ``now``, else when it next will."""
        spans = self._watch.get(patient_id)
        if spans is None:
            first = self._first[patient_id]
            return (first, None) if first <= now else (None, first)
        for since, until in spans:
            if since > now:
                return None, since
            if until is None or now < until:
                return since, None
        return None, None

    def _first_due(self, patient_id: str, since: datetime) -> datetime:
        """When the patient's first missing rule can fire, as the timer's limit reads it."""
        last = self._last
        return min(
            (last.get((patient_id, metric)) or since) + timedelta(hours=hours)
            for metric, hours in self._missing[patient_id]
        )

    def _plan(self, patient_id: str, at: datetime) -> None:
        if self._due.get(patient_id) != at:
            self._due[patient_id] = at
            heapq.heappush(self._timer, (at, patient_id))

    def _tick(self, now: datetime) -> list[AlertCandidate]:
        """The missing-data timer at ``now``, for the watched patients whose silence is due."""
        for pid in self._moved:
            since, later = self._watched(pid, now)
            self._plan(pid, self._first_due(pid, since) if since else later or now)
        self._moved.clear()
        out: list[AlertCandidate] = []
        again = []
        last = self._last
        while self._timer and self._timer[0][0] <= now:
            at, pid = heapq.heappop(self._timer)
            if self._due.get(pid) != at:
                continue  # re-planned since
            del self._due[pid]
            since, later = self._watched(pid, now)
            if since is None:
                if later is not None:
                    self._plan(pid, later)
                continue  # else not watched again unless a reading arrives
            due = self._first_due(pid, since)
            if due > now:
                self._plan(pid, due)
                continue

            def silence_of(metric: Metric, pid: str = pid, since: datetime = since) -> Silence:
                return Silence(pid, last.get((pid, metric)), since, None)

            out.extend(self._engine.missing(self._context(pid), silence_of, now))
            again.append(pid)
        for pid in again:  # still silent: evaluated at every tick, as production does
            self._plan(pid, now + self.options.step)
        return out

    def _decide(
        self, candidates: list[AlertCandidate], clears: list[Clear], ungated: list[AlertCandidate]
    ) -> None:
        """The policy, in time order, on the ledgers (the last one without confirmation)."""
        assert self._start is not None
        candidates.sort(key=_at)
        ungated.sort(key=_at)
        clears.sort(key=lambda c: c.measured_at)
        self._proposed.update(c.rule_id for c in ungated if c.measured_at >= self._start)
        for ledger in (self._grouped, self._ungrouped):
            ledger.decide(candidates, clears, self._start)
        if self._confirm.active:
            self._unconfirmed.decide(ungated, clears, self._start)

    # --- the figures ---------------------------------------------------------------

    def _burden(self, start: datetime, end: datetime) -> Burden:
        alerts = self._grouped.counted()
        by_rule: dict[str, list[Alert]] = {}
        for a in alerts:
            by_rule.setdefault(a.rule_id, []).append(a)
        rule_ids = set(self._in_play) | set(by_rule)
        confirms = self._confirm.stats()
        without = Counter(a.rule_id for a in self._unconfirmed.counted())
        per_rule = {}
        for rule_id in sorted(rule_ids):
            spec = self._in_play.get(rule_id) or self._book.rule(rule_id)
            mine = by_rule.get(rule_id, [])
            counts = Counter(a.severity for a in mine)
            per_rule[rule_id] = RuleBurden(
                rule_id=rule_id,
                program=spec.program if spec else "",
                title=spec.title if spec else rule_id,
                alerts=len(mine),
                by_severity={s.name.lower(): counts[s] for s in SEVERITIES},
                patients=len({a.patient_id for a in mine}),
                candidates=self._proposed[rule_id],
                escalations=sum(a.escalations for a in mine),
                auto_resolved=sum(a.auto_resolved for a in mine),
                confirm=replace(c, avoided=max(0, without[rule_id] - len(mine)))
                if (c := confirms.get(rule_id)) is not None
                else None,
            )
        patients = self._patients | {a.patient_id for a in alerts}
        return Burden(
            start=start,
            end=end,
            options=self.options,
            patients=len(patients),
            readings=self._readings,
            alerts=alerts,
            per_rule=per_rule,
            rule_set={p.program: p.digest[:12] for p in self._book.programs.values()},
            notes=self._notes(),
            ungrouped=len(self._ungrouped.counted()),
        )

    def _notes(self) -> tuple[str, ...]:
        notes = []
        if self._missing:
            notes.append(NO_HEARTBEATS)
            unbound = sum(1 for p in self._missing if p not in self._watch)
            if unbound:
                notes.append(WATCHED_FROM_FIRST.format(n=unbound))
        unknown: Counter[str] = Counter()
        for pid in self._first:
            for name in self._context(pid).programs:
                if name not in self._book.programs:
                    unknown[name] += 1
        if unknown:
            listed = ", ".join(f"{name} ({n} patients)" for name, n in sorted(unknown.items()))
            notes.append(f"Programs not in the rule set were ignored: {listed}.")
        if self._after_end:
            notes.append(f"{self._after_end} reading(s) at or after the end were left out.")
        return tuple(notes)


def backtest(
    book: RuleBook,
    readings: Iterable[AcceptedReading],
    contexts: Mapping[str, PatientContext] | None = None,
    options: Options | None = None,
    watch: Mapping[str, Iterable[Span]] | None = None,
) -> Burden:
    """Replay readings (any order) through ``book``: the whole backtest in one call."""
    replay = Replay(book, options)
    replay.feed(sorted(readings, key=lambda a: a.reading.measured_at), contexts, watch)
    return replay.finish()


__all__ = [
    "Alert",
    "Burden",
    "Comparison",
    "Options",
    "Replay",
    "RuleBurden",
    "Span",
    "backtest",
    "merge_spans",
]
