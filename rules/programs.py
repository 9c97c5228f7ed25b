"""Care programs: the built-in specs (``rules/programs/*.yaml``) and the active rule book.

Every clinical number in those files cites its source next to it. Patients belong
to programs; ``general`` applies to everyone. The database keeps versions of each
program (``rpm.storage.rule_programs``); the built-in files seed the first version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .spec import ProgramSpec, RuleSpec, parse_program

BUILTIN_DIR = Path(__file__).with_name("programs")
GENERAL = "general"


def parse_document(text: str | bytes) -> ProgramSpec:
    """A program from YAML or JSON text (JSON is YAML); raises ``ValueError`` when invalid."""
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML or JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("a program document is a mapping with program, title and rules")
    return parse_program(document)


def builtin_programs() -> dict[str, ProgramSpec]:
    programs = [parse_document(p.read_text()) for p in sorted(BUILTIN_DIR.glob("*.yaml"))]
    return {p.program: p for p in programs}


@dataclass(frozen=True, slots=True)
class RuleBook:
    """The active version of every program, and how a patient's rules are chosen."""

    programs: Mapping[str, ProgramSpec]
    versions: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def builtin(cls) -> RuleBook:
        return cls(MappingProxyType(builtin_programs()))

    def rules_for(self, programs: Iterable[str]) -> tuple[RuleSpec, ...]:
        """``general`` first, then the patient's programs in order.

        A later program's rule with the same id replaces the earlier one (COPD's NEWS2
        with SpO2 scale 2 replaces the general one), and a program may switch off earlier
        rules (``disables``); unknown program names are ignored.
        """
        chosen: dict[str, RuleSpec] = {}
        for name in (GENERAL, *programs):
            program = self.programs.get(name)
            if program is not None:
                for rule_id in program.disables:
                    chosen.pop(rule_id, None)
                for rule in program.rules:
                    chosen[rule.id] = rule
        return tuple(chosen.values())

    def rule(self, rule_id: str, programs: Iterable[str] = ()) -> RuleSpec | None:
        for r in self.rules_for(programs):
            if r.id == rule_id:
                return r
        return None

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "program": p.program,
                "version": self.versions.get(p.program),
                "digest": p.digest,
                **json.loads(p.canonical_json()),
            }
            for p in self.programs.values()
        ]
