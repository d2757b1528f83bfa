"""Reading the TOML configuration files into validated settings.

Files are parsed with the standard library's tomllib (fast, no dependency).
Every problem is a ConfigError naming the file, the key and its line: an
unknown key, a wrong type, a bad value, a syntax error. Daemons turn that
into exit 78 before they touch the network.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import log
from ..errors import ConfigError
from . import legacy, schema
from .paths import Layout
from .textfile import read_config_text

# A config file larger than this is not a config file.
MAX_CONFIG_BYTES = 1_048_576
# At most this many allowlist entries and profiles (bounds memory and the
# executor's fixed tables).
MAX_SCRIPTS = 4096
MAX_PROFILES = 64
MAX_TAGS = 256

_TYPE_WORDS = {
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "path": "a string (absolute path)",
    "strings": "an array of strings",
    "paths": "an array of absolute paths",
}


class Settings:
    """Validated values of one file's flat keys, as attributes."""

    def __init__(self, values: dict[str, Any], source: Path | None):
        self._values = dict(values)
        self.source = source

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def replace(self, **changes: Any) -> Settings:
        values = dict(self._values)
        values.update(changes)
        return Settings(values, self.source)


@dataclass(frozen=True)
class Profile:
    name: str
    run_as: str | None
    caps: tuple[str, ...]
    writable: tuple[str, ...]
    no_new_privileges: bool


@dataclass(frozen=True)
class ScriptEntry:
    name: str
    path: str
    profile: str = "default"
    timeout: int | None = None


@dataclass
class AgentConfig:
    settings: Settings
    tags: dict[str, str] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.settings, name)

    @property
    def source(self) -> Path | None:
        return self.settings.source


class _Document:
    """A parsed TOML file plus what is needed to point at a line."""

    def __init__(self, path: Path, text: str, data: dict[str, Any]):
        self.path = path
        self.text = text
        self.data = data
        self._lines = text.splitlines()

    def line_of(self, table: tuple[str, ...], key: str | None) -> int | None:
        """Line of `key` inside `table`; else of the line that defines the
        table (a header or an inline table); else None."""
        wanted = table + ((key,) if key else ())
        current: tuple[str, ...] = ()
        fallback = None
        for number, raw in enumerate(self._lines, start=1):
            line = raw.strip()
            header = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", line)
            if header:
                current = _split_dotted(header.group(1))
                if current == wanted:
                    return number
                if current == table and fallback is None:
                    fallback = number
                continue
            assignment = re.match(r"""^("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""", line)
            if not assignment:
                continue
            full = current + _split_dotted(assignment.group(1))
            if full[: len(wanted)] == wanted:
                return number
            if full == table and fallback is None:
                fallback = number  # an inline table: `name = { ... }`
        return fallback

    def error(
        self, message: str, table: tuple[str, ...] = (), key: str | None = None
    ) -> ConfigError:
        dotted = ".".join(table + ((key,) if key else ()))
        return ConfigError(message, str(self.path), dotted or None, self.line_of(table, key))


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = []
    for part in re.findall(r'"[^"]*"|\'[^\']*\'|[^.\s]+', text):
        parts.append(part.strip("\"'"))
    return tuple(parts)


def read_document(path: Path) -> _Document:
    text = read_config_text(path, MAX_CONFIG_BYTES)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line = None
        match = re.search(r"\(at line (\d+), column \d+\)", message)
        if match:
            line = int(match.group(1))
            message = message[: match.start()].strip()
        raise ConfigError(f"TOML syntax error: {message}", str(path), None, line) from None
    return _Document(path, text, data)


def _check_value(doc: _Document, key: schema.Key, value: Any, table: tuple[str, ...]) -> Any:
    kind = key.kind
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "path": isinstance(value, str),
        "strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "paths": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise doc.error(f"must be {_TYPE_WORDS[kind]}, not {_describe(value)}", table, key.name)
    if kind == "path":
        if not value.startswith("/"):
            raise doc.error(f"must be an absolute path, not {value!r}", table, key.name)
        value = schema.normalise_path(value)
    if kind == "paths":
        for item in value:
            if not item.startswith("/"):
                raise doc.error(f"must hold absolute paths, not {item!r}", table, key.name)
        value = [schema.normalise_path(item) for item in value]
    if kind == "str" and "\x00" in value:
        raise doc.error("must not contain NUL", table, key.name)
    if key.check is not None:
        problem = key.check(value)
        if problem:
            raise doc.error(problem, table, key.name)
    return value


# Checked in order: bool before int, because a bool is an int in Python.
_VALUE_WORDS = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _describe(value: Any) -> str:
    for kind, words in _VALUE_WORDS:
        if isinstance(value, kind):
            return words
    return type(value).__name__


def _flat_settings(
    doc: _Document | None,
    data: dict[str, Any],
    keys: tuple[schema.Key, ...],
    layout: Layout,
    table: tuple[str, ...] = (),
    allowed_tables: tuple[str, ...] = (),
) -> dict[str, Any]:
    known = schema.keys_by_name(keys)
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in allowed_tables and not table:
            continue
        key = known.get(name)
        if key is None:
            assert doc is not None
            raise doc.error("unknown key" + _suggest(name, known), table, name)
        values[name] = _check_value(doc, key, value, table) if doc else value
    for name, key in known.items():
        if name not in values:
            values[name] = key.default_for(layout)
    return values


def _suggest(name: str, known: dict[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _load_or_defaults(
    path: Path | None, default_path: Path, legacy_path: Path | None = None, parse=None
) -> _Document | None:
    """The document at an explicit path (must exist) or at the default path
    (may be absent: all defaults apply). A `.conf` path, or 0.12's file at
    `legacy_path` when the TOML file does not exist, is read with `parse`
    (config/legacy.py)."""
    source = config_source(path, default_path, legacy_path if parse is not None else None)
    if source is None:
        return None
    if parse is not None and (source == legacy_path or legacy.is_legacy_path(source)):
        return _legacy_document(parse(source))
    return read_document(source)


def config_source(
    path: Path | None, default_path: Path, legacy_path: Path | None = None
) -> Path | None:
    """Which file a configuration is read from: the explicit path, else the
    default one when it exists, else 0.12's file when that exists; None
    when there is none (all defaults apply)."""
    if path is not None:
        return Path(path)
    if default_path.exists():
        return default_path
    if legacy_path is not None and legacy_path.exists():
        return legacy_path
    return None


class _LegacyDocument(_Document):
    """A 0.12 file's values, checked like TOML values, errors pointing at
    the 0.12 line."""

    def __init__(self, parsed: legacy.Parsed):
        super().__init__(parsed.path, "", parsed.data)
        self.parsed = parsed

    def line_of(self, table: tuple[str, ...], key: str | None) -> int | None:
        return self.parsed.line_of(table, key)


def _legacy_document(parsed: legacy.Parsed) -> _LegacyDocument:
    log.defer("config-read", log.INFO, FILE=str(parsed.path), FORMAT=legacy.FORMAT_NAME)
    for warning in parsed.warnings:
        log.defer("config-warn", log.WARNING, FILE=str(parsed.path), **warning)
    return _LegacyDocument(parsed)


def load_dispatcher(layout: Layout, path: Path | None = None) -> Settings:
    doc = _load_or_defaults(
        path, layout.dispatcher_config, layout.legacy_dispatcher_config, legacy.parse_dispatcher
    )
    data = doc.data if doc else {}
    for name, value in data.items():
        if isinstance(value, dict):
            raise doc.error("unexpected table: ctrl-exec.toml has only top-level keys", (name,))  # type: ignore[union-attr]
    values = _flat_settings(doc, data, schema.DISPATCHER_KEYS, layout)
    if values["timeout"] is not None and "read_timeout" not in data:
        values["read_timeout"] = values["timeout"]
    return Settings(values, doc.path if doc else None)


def load_agent(layout: Layout, path: Path | None = None) -> AgentConfig:
    doc = _load_or_defaults(
        path, layout.agent_config, layout.legacy_agent_config, legacy.parse_agent
    )
    data = doc.data if doc else {}
    values = _flat_settings(
        doc, data, schema.AGENT_KEYS, layout, allowed_tables=("tags", "profile")
    )
    tags = _tags(doc, data.get("tags", {}))
    profiles = _profiles(doc, data.get("profile", {}), layout)
    return AgentConfig(Settings(values, doc.path if doc else None), tags, profiles)


def _tags(doc: _Document | None, raw: Any) -> dict[str, str]:
    if not raw:
        return {}
    assert doc is not None
    if not isinstance(raw, dict):
        raise doc.error(f"must be a table of strings, not {_describe(raw)}", (), "tags")
    if len(raw) > MAX_TAGS:
        raise doc.error(f"at most {MAX_TAGS} tags", ("tags",))
    for name, value in raw.items():
        if not isinstance(value, str):
            raise doc.error(f"tag values must be strings, not {_describe(value)}", ("tags",), name)
    return dict(raw)


def _profiles(doc: _Document | None, raw: Any, layout: Layout) -> dict[str, Profile]:
    # No profile is implied, `default` included: a script without `profile`
    # uses `default`, and load_allowlist refuses it unless it is defined.
    if not raw:
        return {}
    assert doc is not None
    if not isinstance(raw, dict):
        raise doc.error("must be tables [profile.<name>]", (), "profile")
    if len(raw) > MAX_PROFILES:
        raise doc.error(f"at most {MAX_PROFILES} profiles", ("profile",))
    profiles = {}
    for name, body in raw.items():
        if not schema.PROFILE_NAME.fullmatch(name):
            raise doc.error(
                "profile names are letters, digits, '.', '_' and '-'", ("profile",), name
            )
        if not isinstance(body, dict):
            raise doc.error(f"must be a table, not {_describe(body)}", ("profile",), name)
        values = _flat_settings(doc, body, schema.PROFILE_KEYS, layout, table=("profile", name))
        profiles[name] = Profile(
            name,
            values["run_as"],
            tuple(values["caps"]),
            tuple(values["writable"]),
            values["no_new_privileges"],
        )
    return profiles


def load_allowlist(
    layout: Layout, path: Path | None = None, profiles: dict[str, Profile] | None = None
) -> dict[str, ScriptEntry]:
    """The allowlist. With `profiles` given, every referenced profile must be
    defined there, `default` (what a script without `profile` uses) too."""
    doc = _load_or_defaults(path, layout.allowlist, layout.legacy_allowlist, legacy.parse_allowlist)
    if doc is None:
        return {}
    if len(doc.data) > MAX_SCRIPTS:
        raise doc.error(f"at most {MAX_SCRIPTS} scripts")
    entries: dict[str, ScriptEntry] = {}
    for name, value in doc.data.items():
        if not schema.is_script_name(name):
            raise doc.error("script names are letters, digits, '_' and '-'", (), name)
        if isinstance(value, str):
            value = {"path": value}
        if not isinstance(value, dict):
            raise doc.error(f"must be a path string or a table, not {_describe(value)}", (), name)
        if "path" not in value:
            raise doc.error("has no 'path'", (), name)
        values = _flat_settings(doc, value, schema.SCRIPT_KEYS, layout, table=(name,))
        entry = ScriptEntry(name, values["path"], values["profile"], values["timeout"])
        if profiles is not None and entry.profile not in profiles:
            where = ((name,), "profile") if "profile" in value else ((), name)
            raise doc.error(
                f"uses profile '{entry.profile}', which agent.toml does not define "
                f"(add a [profile.{entry.profile}] table)",
                *where,
            )
        entries[name] = entry
    return entries
