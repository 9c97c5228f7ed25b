"""What a reading marked entered-in-error does to the alert episodes it is evidence of. Pure.

An episode cites its readings as its first and last reading and in its contributions (one per
rule that fired on it); recurrences and late evidence only count (``occurrences``). When every
reading it cites is entered-in-error and nothing else was counted, nothing is left that made it
fire: an unresolved episode is withdrawn (resolved by the system, saying why). Otherwise the
episode keeps standing on its other evidence and is annotated; a resolved one is annotated.
FHIR R4 says of entered-in-error: "the information should not be used"
(http://hl7.org/fhir/R4/valueset-observation-status.html), so an alert standing only on it
must not wait for a nurse.
"""

from __future__ import annotations

from dataclasses import dataclass

from .lifecycle import Action, AlertState


@dataclass(frozen=True, slots=True)
class CitedEvidence:
    """What an episode rests on: the readings it cites and how many firings it counted."""

    alert_id: int
    state: AlertState
    first_uid: str | None
    last_uid: str | None  # the reading of the latest recurrence
    contribution_uids: tuple[str | None, ...]  # one per rule that fired (None: no reading)
    occurrences: int

    @property
    def reading_uids(self) -> frozenset[str]:
        """Every reading the episode names."""
        named = (self.first_uid, self.last_uid, *self.contribution_uids)
        return frozenset(u for u in named if u is not None)

    @property
    def named_firings(self) -> int:
        """How many of ``occurrences`` the episode can name a reading for: one per
        contribution, and the latest recurrence when its reading is not among them."""
        extra = self.last_uid is not None and self.last_uid not in self.contribution_uids
        return len(self.contribution_uids) + int(extra)


def on_entered_in_error(episode: CitedEvidence, in_error: frozenset[str]) -> Action:
    """``WITHDRAW`` when nothing but entered-in-error readings made the unresolved episode
    fire; ``EVIDENCE_ENTERED_IN_ERROR`` (annotate) otherwise. ``in_error``: every reading of
    the patient known to be entered-in-error, this one included."""
    only_those = (
        bool(episode.reading_uids)
        and episode.reading_uids <= in_error
        and None not in episode.contribution_uids  # a missing-data rule fired on no reading
        # More firings than it names: a recurrence or late evidence from a reading the
        # episode does not name, which may still stand.
        and episode.occurrences <= episode.named_firings
    )
    if only_those and episode.state is not AlertState.RESOLVED:
        return Action.WITHDRAW
    return Action.EVIDENCE_ENTERED_IN_ERROR
