"""Reading a configuration file's text: bounded, UTF-8, every failure a
ConfigError naming the file (for ctrl-exec.toml and 0.12's files alike)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def read_config_text(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError("file not found", str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from None
    if len(raw) > limit:
        raise ConfigError(f"larger than {limit} bytes", str(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", str(path)) from None
