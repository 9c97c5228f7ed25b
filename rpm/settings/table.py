"""The settings table of the documentation, generated from the groups' fields.

One table per group, under a line naming it; rows ``| `RPM_NAME` | default | meaning |``,
the meaning being the field's ``description``. The committed copy sits between
``START`` and ``END`` (tests/test_operations.py checks it is current); ``write`` renews it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import SecretStr, TypeAdapter
from pydantic.fields import FieldInfo

from . import Settings, env_name

START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"


def _default(field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        text = "none"
    elif value == "":
        text = "empty"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, str):
        text = f"`{value}`"
    else:  # dictionaries, as the JSON a variable gives them in
        assert field.annotation is not None
        plain = TypeAdapter[Any](field.annotation).dump_python(value, mode="json")
        text = f"`{json.dumps(plain)}`"
    extra = field.json_schema_extra
    note = extra.get("default_note") if isinstance(extra, dict) else None
    return f"{text} ({note})" if note else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The tables, one per settings group, as Markdown."""
    parts: list[str] = []
    for name, group in Settings.groups().items():
        summary = " ".join((group.__doc__ or "").split())
        lines = [
            f"**`{name}`** ({group.__name__}): {summary}",
            "",
            "| variable | default | meaning |",
            "|---|---|---|",
        ]
        for field in group.model_fields.values():
            assert field.description is not None
            lines.append(
                f"| `{env_name(field)}` | {_cell(_default(field))} | {_cell(field.description)} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def committed(text: str) -> str:
    """What ``text`` holds between the markers (exactly one pair of them)."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"expected one {START} and one {END}")
    inside = text.split(START, 1)[1].split(END, 1)[0]
    return inside.strip("\n") + "\n"


def write(path: Path) -> bool:
    """Put the current tables between the markers in ``path``; True when it changed."""
    text = path.read_text(encoding="utf-8")
    committed(text)  # the markers are there, once
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    new = f"{head}{START}\n{render()}{END}{tail}"
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True
