"""The alert lifecycle table and the policy that turns candidates into decisions, snoozes
included."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts import Action, AlertState, Episode, decide, next_state
from alerts.policy import EpisodeKey, Grouping, Snooze, SnoozeCaps
from rpm.domain import AlertCandidate, Metric, Severity
from rpm.domain.errors import InvalidTransition, SnoozeTooLong
from rules.engine import Engine, PatientContext
from rules.programs import RuleBook
from tests.examples import examples
from tests.helpers import T0, AcceptedReading, bp, single

pytestmark = pytest.mark.pure

CTX = {"pat-1": PatientContext("pat-1")}


def candidates(*readings: AcceptedReading) -> list[AlertCandidate]:
    return Engine().step(list(readings), CTX).candidates


def test_first_candidate_opens_an_episode_and_notifies_the_patient() -> None:
    [d] = decide(candidates(bp(190, 100)), {})
    assert d.action is Action.OPEN
    assert d.new_state is AlertState.OPEN
    assert d.notify_patient


def test_candidates_of_one_batch_fold_into_one_episode() -> None:
    ds = decide(candidates(bp(190, 100), bp(200, 100, device="dev-2")), {})
    assert [d.action for d in ds] == [Action.OPEN, Action.RECUR]
    assert [d.notify_patient for d in ds] == [True, False]


def test_a_candidate_for_an_open_episode_recurs_without_notifying() -> None:
    ep = Episode(7, "pat-1", "bp.hypertensive_crisis", Severity.CRITICAL, AlertState.ACKNOWLEDGED)
    [d] = decide(candidates(bp(190, 100)), {("pat-1", "bp.hypertensive_crisis"): ep})
    assert d.action is Action.RECUR
    assert d.new_state is AlertState.ACKNOWLEDGED
    assert not d.notify_patient


def test_a_more_severe_candidate_escalates_and_reopens_an_acknowledged_episode() -> None:
    ep = Episode(7, "pat-1", "bp.hypertensive_crisis", Severity.HIGH, AlertState.ACKNOWLEDGED)
    [d] = decide(candidates(bp(190, 100)), {("pat-1", "bp.hypertensive_crisis"): ep})
    assert d.action is Action.ESCALATE
    assert d.new_state is AlertState.OPEN


@pytest.mark.parametrize(
    ("state", "action", "after"),
    [
        (AlertState.OPEN, Action.ACKNOWLEDGE, AlertState.ACKNOWLEDGED),
        (AlertState.OPEN, Action.RESOLVE, AlertState.RESOLVED),
        (AlertState.ACKNOWLEDGED, Action.RESOLVE, AlertState.RESOLVED),
    ],
)
def test_allowed_transitions(state: AlertState, action: Action, after: AlertState) -> None:
    assert next_state(state, action) is after


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (AlertState.RESOLVED, Action.ACKNOWLEDGE),
        (AlertState.RESOLVED, Action.RESOLVE),
        (AlertState.ACKNOWLEDGED, Action.ACKNOWLEDGE),
        (None, Action.RESOLVE),
    ],
)
def test_forbidden_transitions_raise(state: AlertState | None, action: Action) -> None:
    with pytest.raises(InvalidTransition):
        next_state(state, action)


# --- snoozes: per patient and rule, up to a severity; a worse candidate breaks through --

DM = {"pat-1": PatientContext("pat-1", ("diabetes",))}
HIGH_GLUCOSE = ("pat-1", "dm.glucose_high")
LOW_GLUCOSE = ("pat-1", "dm.glucose_low")
UNTIL = T0 + timedelta(hours=2)


def glucose(*values: float) -> list[AlertCandidate]:
    readings = [
        single(Metric.GLUCOSE, "glucose", v, at=T0 + timedelta(minutes=i))
        for i, v in enumerate(values)
    ]
    return Engine().step(readings, DM).candidates


def snoozed(rule_id: str, up_to: Severity) -> dict[EpisodeKey, Snooze]:
    return {("pat-1", rule_id): Snooze("pat-1", rule_id, UNTIL, up_to, "nurse-kim")}


def test_a_snoozed_kind_opens_silently_and_says_why() -> None:
    [d] = decide(glucose(300), {}, snoozed("dm.glucose_high", Severity.MEDIUM))
    assert d.action is Action.OPEN
    assert not d.notify_patient
    assert not d.start_escalation
    assert d.suppressed is not None
    assert "snoozed until" in d.suppressed
    assert "nurse-kim" in d.suppressed


def test_snoozing_high_glucose_leaves_low_glucose_alerting() -> None:
    ds = decide(glucose(300, 60), {}, snoozed("dm.glucose_high", Severity.MEDIUM))
    by_rule = {d.candidate.rule_id: d for d in ds}
    assert set(by_rule) == {"dm.glucose_high", "dm.glucose_low"}
    assert not by_rule["dm.glucose_high"].notify_patient
    low = by_rule["dm.glucose_low"]
    assert low.action is Action.OPEN
    assert low.notify_patient
    assert low.start_escalation
    assert low.suppressed is None


def test_a_more_severe_candidate_breaks_through_a_silent_episode() -> None:
    silent = Episode(9, "pat-1", "dm.glucose_high", Severity.MEDIUM, AlertState.OPEN, silenced=True)
    [d] = decide(glucose(450), {HIGH_GLUCOSE: silent}, snoozed("dm.glucose_high", Severity.MEDIUM))
    assert d.action is Action.ESCALATE
    assert d.candidate.severity is Severity.HIGH
    # The patient was never told about this episode: breaking through tells them now.
    assert d.notify_patient
    assert d.start_escalation
    assert d.suppressed is None


def test_breaking_through_in_the_batch_that_opened_silently() -> None:
    ds = decide(glucose(300, 450), {}, snoozed("dm.glucose_high", Severity.MEDIUM))
    assert [d.action for d in ds] == [Action.OPEN, Action.ESCALATE]
    assert [d.notify_patient for d in ds] == [False, True]
    assert [d.start_escalation for d in ds] == [False, True]
    assert ds[1].episode is None  # written by the same batch


def test_a_silent_episode_goes_live_on_the_first_candidate_after_the_snooze() -> None:
    silent = Episode(9, "pat-1", "dm.glucose_high", Severity.MEDIUM, AlertState.OPEN, silenced=True)
    [still] = decide(
        glucose(300), {HIGH_GLUCOSE: silent}, snoozed("dm.glucose_high", Severity.HIGH)
    )
    assert still.action is Action.RECUR
    assert not still.notify_patient
    assert not still.start_escalation
    live, again = decide(glucose(300, 310), {HIGH_GLUCOSE: silent}, {})
    assert live.action is Action.RECUR
    assert live.notify_patient
    assert live.start_escalation
    assert not again.notify_patient  # once
    assert not again.start_escalation


def test_a_snoozed_escalation_reopens_but_starts_no_escalation() -> None:
    acked = Episode(9, "pat-1", "dm.glucose_low", Severity.HIGH, AlertState.ACKNOWLEDGED)
    [d] = decide(glucose(50), {LOW_GLUCOSE: acked}, snoozed("dm.glucose_low", Severity.CRITICAL))
    assert d.action is Action.ESCALATE
    assert d.new_state is AlertState.OPEN
    assert not d.start_escalation
    assert d.suppressed is not None


def test_without_a_snooze_an_escalation_re_times_the_timer_and_a_recurrence_does_not() -> None:
    ep = Episode(7, "pat-1", "bp.hypertensive_crisis", Severity.HIGH, AlertState.OPEN)
    [d] = decide(candidates(bp(190, 100)), {("pat-1", "bp.hypertensive_crisis"): ep})
    assert d.start_escalation
    assert not d.notify_patient
    ep = Episode(7, "pat-1", "bp.hypertensive_crisis", Severity.CRITICAL, AlertState.OPEN)
    [d] = decide(candidates(bp(190, 100)), {("pat-1", "bp.hypertensive_crisis"): ep})
    assert not d.start_escalation


def test_snooze_caps_by_severity() -> None:
    caps = SnoozeCaps()
    caps.check(Severity.CRITICAL, timedelta(minutes=30))
    with pytest.raises(SnoozeTooLong, match="at most 30 min"):
        caps.check(Severity.CRITICAL, timedelta(minutes=31))
    caps.check(Severity.HIGH, timedelta(hours=4))
    with pytest.raises(SnoozeTooLong):
        caps.check(Severity.HIGH, timedelta(hours=4, seconds=1))
    caps.check(Severity.LOW, timedelta(hours=24))
    with pytest.raises(SnoozeTooLong):
        caps.check(Severity.MEDIUM, timedelta(hours=25))
    tighter = SnoozeCaps(
        {s: timedelta(minutes=15 if s is Severity.CRITICAL else 60) for s in Severity}
    )
    with pytest.raises(SnoozeTooLong):
        tighter.check(Severity.CRITICAL, timedelta(minutes=16))


# --- measured time decides (issue 17, item 1) --------------------------------------------
#
# A reading is compared with the episode's resolution, acknowledgement and snoozes by the
# time it was measured, not the time it arrived. Boundary: a reading measured at the very
# instant of a resolution (or at a snooze's end) counts as after it: the nurse who resolved
# cannot have seen it, so it opens a new episode (the safe side).

CRISIS_KEY = ("pat-1", "bp.hypertensive_crisis")
RESOLVED_AT = T0 + timedelta(hours=1)


def _resolved_crisis(severity: Severity = Severity.CRITICAL) -> Episode:
    return Episode(
        5,
        "pat-1",
        "bp.hypertensive_crisis",
        severity,
        AlertState.RESOLVED,
        acknowledged_at=T0 + timedelta(minutes=10),
        resolved_at=RESOLVED_AT,
    )


def test_a_crisis_reading_three_hours_late_measured_before_the_resolution_is_late_evidence() -> (
    None
):
    # The case: a phone synced 3 h late a crisis reading (ACC/AHA 2017 §11.2: SBP >
    # 180) measured 5 min before the nurse resolved the episode. It arrives at 3 h after its
    # measured time; it must open nothing, schedule no escalation and queue no SMS.
    late = candidates(bp(200, 110, at=RESOLVED_AT - timedelta(minutes=5)))
    [d] = decide(late, {}, resolved={CRISIS_KEY: [_resolved_crisis()]})
    assert d.action is Action.LATE_EVIDENCE
    assert d.episode is not None
    assert d.episode.alert_id == 5
    assert d.new_state is AlertState.RESOLVED
    assert not d.notify_patient
    assert not d.start_escalation
    assert d.late is not None
    assert "before the resolution" in d.late


def test_a_reading_measured_exactly_at_the_resolution_opens_a_new_episode() -> None:
    [d] = decide(
        candidates(bp(200, 110, at=RESOLVED_AT)), {}, resolved={CRISIS_KEY: [_resolved_crisis()]}
    )
    assert d.action is Action.OPEN
    assert d.notify_patient
    assert d.start_escalation


def test_a_reading_measured_after_the_resolution_opens_a_new_episode() -> None:
    [d] = decide(
        candidates(bp(200, 110, at=RESOLVED_AT + timedelta(seconds=1))),
        {},
        resolved={CRISIS_KEY: [_resolved_crisis()]},
    )
    assert d.action is Action.OPEN


def test_late_evidence_goes_to_the_episode_whose_resolution_follows_it() -> None:
    first = _resolved_crisis()
    second = Episode(
        6,
        "pat-1",
        "bp.hypertensive_crisis",
        Severity.CRITICAL,
        AlertState.RESOLVED,
        resolved_at=RESOLVED_AT + timedelta(hours=2),
    )
    between = candidates(bp(200, 110, at=RESOLVED_AT + timedelta(minutes=30)))
    [d] = decide(between, {}, resolved={CRISIS_KEY: [second, first]})
    assert d.action is Action.LATE_EVIDENCE
    assert d.episode is second


def test_more_severe_late_evidence_raises_the_resolved_episode_it_joins() -> None:
    # High glucose resolved; a < 54 mg/dL reading (ADA 2024 §6, level 2) measured before the
    # resolution arrives after it: recorded on that episode, not a new one.
    resolved = Episode(
        8,
        "pat-1",
        "dm.glucose_high",
        Severity.MEDIUM,
        AlertState.RESOLVED,
        resolved_at=T0 + timedelta(hours=1),
    )
    [d] = decide(glucose(50), {}, resolved={LOW_GLUCOSE: [replace_key(resolved, LOW_GLUCOSE)]})
    assert d.action is Action.LATE_EVIDENCE
    assert not d.notify_patient
    assert not d.start_escalation


def replace_key(e: Episode, key: EpisodeKey) -> Episode:
    return Episode(
        e.alert_id, key[0], key[1], e.severity, e.state, resolved_at=e.resolved_at, group=key[1]
    )


ACKED_AT = T0 + timedelta(minutes=30)


def _acked(severity: Severity) -> Episode:
    return Episode(
        9, "pat-1", "dm.glucose_low", severity, AlertState.ACKNOWLEDGED, acknowledged_at=ACKED_AT
    )


def test_a_worse_reading_measured_before_the_acknowledgement_does_not_renotify() -> None:
    # Glucose 50 mg/dL (< 54, ADA 2024 §6: critical) measured at T0, before the nurse
    # acknowledged the high-severity episode at T0 + 30 min, arriving after: the episode
    # records the worse value but stays acknowledged, and nobody is paged again.
    [d] = decide(glucose(50), {LOW_GLUCOSE: _acked(Severity.HIGH)})
    assert d.action is Action.LATE_EVIDENCE
    assert d.new_state is AlertState.ACKNOWLEDGED
    assert not d.notify_patient
    assert not d.start_escalation
    assert d.late is not None
    assert "before the acknowledgement" in d.late


def test_a_worse_reading_measured_at_or_after_the_acknowledgement_reopens() -> None:
    reading = single(Metric.GLUCOSE, "glucose", 50, at=ACKED_AT)
    [d] = decide(Engine().step([reading], DM).candidates, {LOW_GLUCOSE: _acked(Severity.HIGH)})
    assert d.action is Action.ESCALATE
    assert d.new_state is AlertState.OPEN
    assert d.start_escalation


def window(since: timedelta, until: timedelta, up_to: Severity = Severity.MEDIUM) -> Snooze:
    return Snooze("pat-1", "dm.glucose_high", T0 + until, up_to, "nurse-kim", T0 + since)


def test_a_reading_measured_inside_an_ended_snooze_is_still_snoozed() -> None:
    # Snoozed from T0 - 1 h to T0 + 30 min; the reading measured at T0 arrives after the
    # snooze ended: it is still snoozed.
    snooze = window(-timedelta(hours=1), timedelta(minutes=30))
    [d] = decide(glucose(300), {}, {HIGH_GLUCOSE: [snooze]})
    assert d.action is Action.OPEN
    assert not d.notify_patient
    assert not d.start_escalation
    assert d.suppressed is not None
    assert "nurse-kim" in d.suppressed


@pytest.mark.parametrize(
    ("since", "until"),
    [
        (timedelta(minutes=1), timedelta(hours=1)),  # measured before the snooze began
        (-timedelta(hours=1), timedelta(0)),  # measured at the instant it ended
    ],
)
def test_a_reading_measured_outside_the_snooze_window_alerts(
    since: timedelta, until: timedelta
) -> None:
    [d] = decide(glucose(300), {}, {HIGH_GLUCOSE: [window(since, until)]})
    assert d.notify_patient
    assert d.start_escalation
    assert d.suppressed is None


# --- one row per clinical event (issue 17, item 3) ---------------------------------------


def book_grouping() -> Grouping:
    book = RuleBook.builtin()
    return Grouping.of(r for p in book.programs.values() for r in p.rules)


def test_one_low_blood_pressure_is_one_episode_listing_both_rules() -> None:
    # SBP 84 < 90 (htn.low_bp; hypotension convention) also scores NEWS2 3 for systolic
    # <= 90 and 2 for pulse 112 (RCP NEWS2 2017): one reading, one clinical event.
    htn = {"pat-1": PatientContext("pat-1", ("hypertension",))}
    cands = Engine().step([bp(84, 52, pulse=112)], htn).candidates
    assert {c.rule_id for c in cands} == {"htn.low_bp", "news2.partial"}
    ds = decide(cands, {}, grouping=book_grouping())
    assert [(d.action, d.candidate.rule_id) for d in ds] == [
        (Action.OPEN, "htn.low_bp"),
        (Action.JOIN, "news2.partial"),
    ]
    assert {d.episode_key for d in ds} == {("pat-1", "htn.low_bp")}
    assert sum(d.notify_patient for d in ds) == 1  # one SMS for the event
    assert sum(d.start_escalation for d in ds) == 1  # one escalation


def test_news2_from_another_reading_keeps_its_own_episode() -> None:
    cands = candidates(bp(84, 52, pulse=112))  # general program: no low-BP rule
    [d] = decide(cands, {}, grouping=book_grouping())
    assert d.candidate.rule_id == "news2.partial"
    assert d.episode_key == ("pat-1", "news2.partial")


def test_a_week_of_weight_gain_is_one_episode() -> None:
    # +0.4 kg a day for a week: the 7-day gain (>= 2.26 kg, 5 lb: AHA HF self-check plan,
    # 2022 AHA/ACC/HFSA) and the weight trend (>= 0.2 kg/day) see the same fluid build-up.
    hf = {"pat-1": PatientContext("pat-1", ("heart_failure",))}
    week = [
        single(Metric.WEIGHT, "weight", 80 + 0.4 * i, at=T0 + timedelta(days=i)) for i in range(8)
    ]
    cands = Engine().step(week, hf).candidates
    assert {c.rule_id for c in cands} == {"hf.weight_gain_7d", "hf.weight_trend"}
    ds = decide(cands, {}, grouping=book_grouping())
    assert {d.episode_key for d in ds} == {("pat-1", "hf.weight_gain")}
    assert [d.action for d in ds].count(Action.OPEN) == 1
    # The trend (low) opened it; the 7-day gain (high) escalates it and leads it from then.
    escalation = next(d for d in ds if d.action is Action.ESCALATE)
    assert escalation.candidate.rule_id == "hf.weight_gain_7d"
    assert escalation.joins
    assert sum(d.notify_patient for d in ds) == 1


def test_without_grouping_each_rule_has_its_own_episode() -> None:
    htn = {"pat-1": PatientContext("pat-1", ("hypertension",))}
    ds = decide(Engine().step([bp(84, 52, pulse=112)], htn).candidates, {})
    assert [d.action for d in ds] == [Action.OPEN, Action.OPEN]


# --- any delivery order and delay gives the same episodes (property) ---------------------

GROUPED = Grouping({"r.a": "g", "r.b": "g"})
KEY = ("pat-1", "g")


def _cand(i: int, minute: int, severity: Severity, rule: str) -> AlertCandidate:
    return AlertCandidate(
        patient_id="pat-1",
        rule_id=rule,
        severity=severity,
        title=f"reading {i}",
        measured_at=T0 + timedelta(minutes=minute),
        explanation=f"reading {i}",
    )


def _deliver(
    readings: list[tuple[int, Severity, str]], delays: list[int], resolves: list[int]
) -> list[tuple[frozenset[int], Severity, int | None]]:
    """Run the policy over arrivals (each reading at measured + delay; nurse resolutions at
    fixed times, before a reading arriving at the same instant) and return the episodes:
    which readings, peak severity, resolution time."""
    events: list[tuple[int, int, int]] = [(t, 0, -1) for t in resolves]
    events += [(m + delays[i], 1, i) for i, (m, _, _) in enumerate(readings)]
    members: dict[int, set[int]] = {}
    resolved_at: dict[int, int] = {}
    current: Episode | None = None
    past: list[Episode] = []
    ids = iter(range(1, 1000))
    for t, kind, i in sorted(events):
        if kind == 0:
            if current is not None:
                at = T0 + timedelta(minutes=t)
                past.append(
                    Episode(**{**_fields(current), "state": AlertState.RESOLVED, "resolved_at": at})
                )
                resolved_at[current.alert_id] = t
                current = None
            continue
        minute, severity, rule = readings[i]
        [d] = decide(
            [_cand(i, minute, severity, rule)],
            {KEY: current} if current is not None else {},
            resolved={KEY: past},
            grouping=GROUPED,
        )
        if d.action is Action.OPEN:
            current = Episode(next(ids), "pat-1", rule, severity, d.new_state, group="g")
            members[current.alert_id] = {i}
            continue
        target = d.episode if d.action is Action.LATE_EVIDENCE else current
        assert target is not None
        members[target.alert_id].add(i)
        raised = Episode(
            **{**_fields(target), "severity": max(target.severity, severity), "state": d.new_state}
        )
        if target.state is AlertState.RESOLVED:
            past = [raised if e.alert_id == target.alert_id else e for e in past]
        else:
            current = raised
    peak = {a: max(readings[i][1] for i in m) for a, m in members.items()}
    return sorted(
        ((frozenset(m), peak[a], resolved_at.get(a)) for a, m in members.items()),
        key=lambda e: min(e[0]),
    )


def _fields(e: Episode) -> dict[str, object]:
    return {name: getattr(e, name) for name in Episode.__slots__}


@st.composite
def _deliveries(draw: st.DrawFn) -> tuple[list[tuple[int, Severity, str]], list[int], list[int]]:
    minutes = sorted(draw(st.sets(st.integers(0, 600), min_size=1, max_size=10)))
    readings = [
        (m, draw(st.sampled_from(list(Severity))), draw(st.sampled_from(["r.a", "r.b"])))
        for m in minutes
    ]
    # Resolutions may fall on a reading's measured instant: the boundary is drawn too.
    resolves = sorted(draw(st.sets(st.sampled_from([*minutes, *range(0, 600, 37)]), max_size=3)))
    delays = [draw(st.integers(0, 300)) for _ in readings]
    # A nurse resolves what she sees: the first reading since the previous resolution
    # arrived in time, so both worlds have the episode she resolves.
    bounds = [-1, *resolves]
    for lo, hi in itertools.pairwise(bounds):
        inside = [i for i, (m, _, _) in enumerate(readings) if lo <= m < hi]
        if inside:
            delays[inside[0]] = 0
    return readings, delays, resolves


@settings(max_examples=examples(200), deadline=None, derandomize=True)
@given(_deliveries())
def test_any_delivery_order_and_delay_gives_the_same_episodes(
    case: tuple[list[tuple[int, Severity, str]], list[int], list[int]],
) -> None:
    readings, delays, resolves = case
    in_time = _deliver(readings, [0] * len(readings), resolves)
    assert _deliver(readings, delays, resolves) == in_time
    # And the partition is the one measured time defines: the readings between two
    # resolutions (a reading at a resolution's instant belongs after it) are one episode.
    cuts = [-1, *resolves, 10**6]
    expected = [
        frozenset(i for i, (m, _, _) in enumerate(readings) if lo <= m < hi)
        for lo, hi in itertools.pairwise(cuts)
    ]
    assert [e[0] for e in in_time] == [s for s in expected if s]


@settings(max_examples=examples(100), deadline=None, derandomize=True)
@given(
    st.integers(0, 600),
    st.integers(0, 600),
    st.integers(1, 600),
    st.sampled_from(list(Severity)),
    st.sampled_from(list(Severity)),
)
def test_measured_inside_a_snooze_never_notifies_and_before_an_ack_never_reopens(
    measured: int, since: int, length: int, severity: Severity, acked_severity: Severity
) -> None:
    cand = _cand(0, measured, severity, "r.a")
    snooze = Snooze(
        "pat-1",
        "g",
        T0 + timedelta(minutes=since + length),
        Severity.CRITICAL,
        "nurse-kim",
        T0 + timedelta(minutes=since),
    )
    [d] = decide([cand], {}, {KEY: [snooze]}, grouping=GROUPED)
    inside = since <= measured < since + length
    assert d.notify_patient is not inside
    assert d.start_escalation is not inside
    # An acknowledgement at ``since``: a reading measured before it never re-opens it.
    acked = Episode(
        3,
        "pat-1",
        "r.a",
        acked_severity,
        AlertState.ACKNOWLEDGED,
        group="g",
        acknowledged_at=T0 + timedelta(minutes=since),
    )
    [d] = decide([cand], {KEY: acked}, grouping=GROUPED)
    if measured < since:
        assert d.new_state is AlertState.ACKNOWLEDGED
        assert not d.notify_patient
        assert not d.start_escalation
    else:
        assert (d.new_state is AlertState.OPEN) is (severity > acked_severity)


@pytest.mark.parametrize(
    ("programs", "spo2", "key", "rules"),
    [
        # Scale 1 (RCP NEWS2 2017): 87 % scores 3 and is below 88 % (BTS 2017 floor): one
        # reading, one event led by the critical rule.
        ((), 87, "spo2.below_88", {"spo2.below_88", "news2.partial"}),
        # 89 %: only the NEWS2 single red score (<= 91 %) sees it: its own episode.
        ((), 89, "news2.partial", {"news2.partial"}),
        # COPD, scale 2: 83 % scores 3, is below the 84 % floor and the 88 % target (BTS
        # 2017): three rules, one desaturation.
        (
            ("copd",),
            83,
            "copd.desaturation",
            {"copd.spo2_critical", "copd.spo2_below_target", "news2.partial"},
        ),
    ],
)
def test_one_low_spo2_reading_is_one_episode(
    programs: tuple[str, ...], spo2: float, key: str, rules: set[str]
) -> None:
    ctx = {"pat-1": PatientContext("pat-1", programs)}
    cands = Engine().step([single(Metric.SPO2, "spo2", spo2)], ctx).candidates
    assert {c.rule_id for c in cands} == rules
    ds = decide(cands, {}, grouping=book_grouping())
    assert {d.episode_key for d in ds} == {("pat-1", key)}
    assert [d.action for d in ds].count(Action.OPEN) == 1
    assert sum(d.notify_patient for d in ds) == 1
    assert ds[0].candidate.severity == max(c.severity for c in cands)  # the leader opens it


# --- confirm before paging: batching and order within a batch change nothing (property) --


@settings(max_examples=examples(150), deadline=None, derandomize=True)
@given(st.data())
def test_confirm_any_batching_and_order_within_a_batch_gives_the_same_episodes(
    data: st.DataObject,
) -> None:
    """COPD SpO2 around the confirmed tier (84-87 %: wait for a repeat, BTS 2017) and the
    critical one (< 84 %: at once), delivered one by one in measured order or in batches in
    any order within each: the same episodes, the same confirmations still waiting."""
    from tests.test_alert_confirm import Store, outcome, spo2

    minutes = sorted(data.draw(st.sets(st.integers(0, 90), min_size=1, max_size=8)))
    values = [data.draw(st.sampled_from([80, 83, 84, 86, 87, 88, 91, 94])) for _ in minutes]
    readings = [spo2(v, m) for v, m in zip(values, minutes, strict=True)]
    one_by_one = Store()
    for r in readings:
        one_by_one.deliver(r)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(readings) - 1)))))
    batched = Store()
    for lo, hi in itertools.pairwise([0, *cuts, len(readings)]):
        if lo < hi:
            batched.deliver(*data.draw(st.permutations(readings[lo:hi])))
    end = T0 + timedelta(hours=3)
    one_by_one.tick(end)
    batched.tick(end)
    assert outcome(batched) == outcome(one_by_one)
