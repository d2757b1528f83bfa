"""ctrl-exec 0.12's `key = value` configuration files, read as 0.12 reads them.

An upgraded host keeps `agent.conf`, `scripts.conf` and `ctrl-exec.conf` until
the operator converts them (`import-config`); until then they are read here
and their values go through the same schema checks as TOML values. Each file
follows its own 0.12 parser's rules (operations §3.1–3.3):

- `ctrl-exec.conf`: a line starting with `#` or with whitespace is skipped
  (so an indented key is ignored, as in 0.12); `key = value`, the value is
  everything after `=`, trimmed, with no inline comments; other lines are
  ignored; `cert`, `key` and `ca` are required.
- `agent.conf`: whole-line `#` comments and blank lines skipped; `[tags]` and
  `[profile NAME]` sections (keys of other sections ignored); any other line
  that is not `key = value` is an error; `port`, `cert`, `key`, `ca` are
  required. An inline `#` is part of the value, as in 0.12.
- `scripts.conf`: `name = /absolute/path [profile=NAME]`, annotations on
  either side of the path; a bad entry is skipped with a warning.

Values become TOML types by the schema's kind of each key: integers,
switches (0.12's "starts with 1 or y", plus true/on), lists (`script_dirs`
and `writable` split on `:`, `allowed_ips` on `,`, `caps` on `,` or spaces).
A key this version does not know is ignored with a warning, as 0.12 ignored
unknown keys. Parsing returns a `Parsed` that both the loader (values) and
`import-config` (values with their comments, in order) use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import schema
from .textfile import read_config_text

DISPATCHER_LEGACY_NAME = "ctrl-exec.conf"
AGENT_LEGACY_NAME = "agent.conf"
ALLOWLIST_LEGACY_NAME = "scripts.conf"

FORMAT_NAME = "0.12"
MAX_LEGACY_BYTES = 1_048_576

_AGENT_KEY = re.compile(r"^\s*(\w[\w-]*)\s*=\s*(.+?)\s*$")
_DISPATCHER_KEY = re.compile(r"^(\w[\w-]*)\s*=(.*)$")
_SECTION = re.compile(r"^\s*\[\s*(?:(profile)\s+)?([\w.-]+)\s*\]\s*$")
_SCRIPT_LINE = re.compile(r"^\s*([\w-]+)\s*=\s*(.*?)\s*$")
_ANNOTATION = re.compile(r"^([a-z_]+)=(.*)$")

# 0.12 keys that no longer do anything there either: ignored quietly.
REMOVED_KEYS = {"dispatcher_cn", "dispatcher_serial_path", "sandbox", "writable_paths"}


@dataclass
class Line:
    """One line of the source, for the converter: a comment, a blank, a
    section header, a key (with its converted value) or an ignored key."""

    kind: str  # comment | blank | section | key | ignored
    text: str
    number: int
    section: tuple[str, ...] = ()
    key: str | None = None
    value: Any = None
    reason: str = ""


@dataclass
class Parsed:
    path: Path
    data: dict[str, Any]
    lines: list[Line] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def line_of(self, section: tuple[str, ...], key: str | None) -> int | None:
        for line in self.lines:
            if line.kind == "key" and line.section == section and line.key == key:
                return line.number
        if section:  # a scripts.conf entry's field: the entry's line
            for line in self.lines:
                if line.kind == "key" and line.section == section[:-1] and line.key == section[-1]:
                    return line.number
        return None


def read_text(path: Path) -> str:
    return read_config_text(path, MAX_LEGACY_BYTES)


def is_legacy_path(path: Path) -> bool:
    return path.suffix == ".conf"


# ---------------------------------------------------------------- values


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    return lowered[:1] in ("1", "y") or lowered in ("true", "on")


def _split(name: str, text: str) -> list[str]:
    if name in ("script_dirs", "writable"):
        parts = text.split(":")
    elif name == "caps":
        parts = re.split(r"[,\s]+", text)
    else:
        parts = text.split(",")
    return [part.strip() for part in parts if part.strip()]


def convert(key: schema.Key, text: str, path: Path, number: int) -> Any:
    """A 0.12 text value as the TOML value the schema expects."""
    if key.kind == "int":
        if not re.fullmatch(r"\d+", text.strip()):
            raise ConfigError(f"must be a whole number, not {text!r}", str(path), key.name, number)
        return int(text.strip())
    if key.kind == "bool":
        return _switch(text)
    if key.kind in ("strings", "paths"):
        return _split(key.name, text)
    return text


# ---------------------------------------------------------------- files


def parse_dispatcher(path: Path, text: str | None = None) -> Parsed:
    text = read_text(path) if text is None else text
    known = schema.keys_by_name(schema.DISPATCHER_KEYS)
    parsed = Parsed(path, {})
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            parsed.lines.append(Line("blank", raw, number))
            continue
        if raw[0] == "#":
            parsed.lines.append(Line("comment", raw, number))
            continue
        match = _DISPATCHER_KEY.match(raw) if not raw[0].isspace() else None
        if match is None:
            # 0.12 skips indented and malformed lines without a word
            parsed.lines.append(Line("ignored", raw, number, reason="not read by 0.12"))
            continue
        name, value = match.group(1), match.group(2).strip()
        _take(parsed, known, (), name, value, raw, number)
    for required in ("cert", "key", "ca"):
        if required not in parsed.data:
            raise ConfigError(f"Missing '{required}' in {path}", str(path))
    return parsed


def parse_agent(path: Path, text: str | None = None) -> Parsed:
    text = read_text(path) if text is None else text
    known_top = schema.keys_by_name(schema.AGENT_KEYS)
    known_profile = schema.keys_by_name(schema.PROFILE_KEYS)
    parsed = Parsed(path, {})
    section: tuple[str, ...] = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            parsed.lines.append(Line("blank", raw, number, section))
            continue
        if stripped.startswith("#"):
            parsed.lines.append(Line("comment", raw, number, section))
            continue
        header = _SECTION.match(raw)
        if header:
            if header.group(1):
                section = ("profile", header.group(2))
                parsed.data.setdefault("profile", {}).setdefault(header.group(2), {})
            else:
                section = (header.group(2),)
                if section == ("tags",):
                    parsed.data.setdefault("tags", {})
            parsed.lines.append(Line("section", raw, number, section))
            continue
        match = _AGENT_KEY.match(raw)
        if match is None:
            raise ConfigError(
                f"Malformed config line: {stripped!r} (expected key = value; "
                "comments go on their own line)",
                str(path),
                None,
                number,
            )
        name, value = match.group(1), match.group(2)
        if section == ("tags",):
            parsed.data["tags"][name] = value
            parsed.lines.append(Line("key", raw, number, section, name, value))
        elif section and section[0] == "profile":
            _take(parsed, known_profile, section, name, value, raw, number)
        elif section:
            parsed.lines.append(
                Line(
                    "ignored",
                    raw,
                    number,
                    section,
                    name,
                    reason=f"in unknown section [{section[0]}]",
                )
            )
        else:
            _take(parsed, known_top, (), name, value, raw, number)
    for required in ("port", "cert", "key", "ca"):
        if required not in parsed.data:
            raise ConfigError(f"Missing '{required}' in {path}", str(path))
    return parsed


def _take(
    parsed: Parsed,
    known: dict[str, schema.Key],
    section: tuple[str, ...],
    name: str,
    value: str,
    raw: str,
    number: int,
) -> None:
    key = known.get(name)
    if key is None:
        reason = "removed before 0.12" if name in REMOVED_KEYS else "not used by this version"
        parsed.lines.append(Line("ignored", raw, number, section, name, reason=reason))
        if name not in REMOVED_KEYS:
            parsed.warnings.append({"KEY": name, "MSG": f"{reason}, ignored", "LINE": str(number)})
        return
    if value == "":
        parsed.lines.append(Line("ignored", raw, number, section, name, reason="empty value"))
        return
    converted = convert(key, value, parsed.path, number)
    target = parsed.data
    for part in section:
        target = target.setdefault(part, {})
    target[name] = converted
    parsed.lines.append(Line("key", raw, number, section, name, converted))


def parse_allowlist(path: Path, text: str | None = None) -> Parsed:
    """scripts.conf; bad entries are skipped with a warning, as in 0.12."""
    text = read_text(path) if text is None else text
    parsed = Parsed(path, {})
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            parsed.lines.append(Line("blank", raw, number))
            continue
        if stripped.startswith("#"):
            parsed.lines.append(Line("comment", raw, number))
            continue
        problem, name, entry = _script_entry(raw)
        if problem or name is None:
            problem = problem or "no script name"
            parsed.lines.append(Line("ignored", raw, number, (), name, reason=problem))
            parsed.warnings.append({"ENTRY": name or stripped[:64], "MSG": problem})
            continue
        parsed.data[name] = entry
        parsed.lines.append(Line("key", raw, number, (), name, entry))
    return parsed


def _script_entry(raw: str) -> tuple[str, str | None, Any]:
    match = _SCRIPT_LINE.match(raw)
    if match is None:
        return "malformed line", None, None
    name, rest = match.group(1), match.group(2)
    bare, notes = [], {}
    for token in rest.split():
        note = _ANNOTATION.match(token)
        if note:
            notes[note.group(1)] = note.group(2)
        else:
            bare.append(token)
    if not bare:
        return "no path", name, None
    if len(bare) > 1:
        return "two paths (one bare token expected)", name, None
    if not bare[0].startswith("/"):
        return f"relative path {bare[0]!r}", name, None
    entry: dict[str, Any] = {"path": bare[0]}
    if "profile" in notes:
        entry["profile"] = notes["profile"]
    if "timeout" in notes and notes["timeout"].isdigit():
        entry["timeout"] = int(notes["timeout"])
    return "", name, entry if len(entry) > 1 else bare[0]


# ---------------------------------------------------------------- conversion


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def to_toml(parsed: Parsed) -> str:
    """The file as TOML, line for line: comments and blank lines kept where
    they were, ignored keys kept as comments that say why."""
    source = parsed.path.name
    out = [f"# Converted from {source} (ctrl-exec 0.12 format) by import-config."]
    for line in parsed.lines:
        if line.kind == "blank":
            out.append("")
        elif line.kind == "comment":
            out.append(line.text.strip())
        elif line.kind == "section":
            if line.section[0] == "profile":
                out.append(f"[profile.{toml_key(line.section[1])}]")
            elif line.section == ("tags",):
                out.append("[tags]")
            else:
                out.append(f"# [{line.section[0]}]  (section not read by ctrl-exec)")
        elif line.kind == "key" and line.key is not None:
            out.append(f"{toml_key(line.key)} = {toml_value(line.value)}")
        else:
            out.append(f"# {line.text.strip()}  ({line.reason}; not converted)")
    return "\n".join(out).rstrip("\n") + "\n"
