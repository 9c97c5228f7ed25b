"""Which patients' cached rule state is stale (pure): several gateways, one truth.

Every unit of work that changes a patient's rule state bumps the patient's version in the
same transaction (``rpm.storage.rule_versions.claim``, which also locks the patient until
commit). This process remembers the version its cached state corresponds to; when its claim
returns anything but that version plus one, another process changed the patient in between,
and the state is rebuilt from the database before the step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class Freshness:
    """The rule-state version this process's engine holds, per patient."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._pending: dict[str, int] = {}

    def stale(self, claimed: Mapping[str, int]) -> set[str]:
        """Patients whose cached state is not the version before ``claimed`` (to reload);
        the claimed versions become this unit of work's pending ones."""
        held = self._held
        out = {p for p, v in claimed.items() if held.get(p) != v - 1}
        self._pending.update(claimed)
        return out

    def committed(self) -> None:
        """The unit of work committed: its versions are what the engine now holds."""
        self._held.update(self._pending)
        self._pending = {}

    def rolled_back(self, patients: Iterable[str]) -> None:
        """The unit of work failed: the engine forgot ``patients``; so do we."""
        self._pending = {}
        for p in patients:
            self._held.pop(p, None)

    def __len__(self) -> int:
        return len(self._held)
