"""The napari workbench: docks, layers, reader/writer hooks.

Docks remember their last settings in small JSON files, one per dock, in
``$LAUGEN_SETTINGS_DIR`` (tests point it at a temporary folder), else
``$XDG_CONFIG_HOME/laugen-napari`` or ``~/.config/laugen-napari``; under pytest without the
variable nothing is remembered, so tests never read or write the user's files. Use
:func:`load_settings` / :func:`save_settings`; a missing or unreadable file means "no memory",
never an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def settings_dir() -> Path | None:
    """The folder of the docks' settings files (not created here); None under pytest without
    ``$LAUGEN_SETTINGS_DIR``."""
    env = os.environ.get("LAUGEN_SETTINGS_DIR")
    if env:
        return Path(env).expanduser()
    if "PYTEST_CURRENT_TEST" in os.environ:
        return None
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "laugen-napari"


def load_settings(name: str) -> dict[str, Any]:
    """The saved settings of dock ``name`` ({} when there are none or the file is unreadable)."""
    d = settings_dir()
    if d is None:
        return {}
    try:
        data = json.loads((d / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(name: str, values: dict[str, Any]) -> None:
    """Save dock ``name``'s settings (JSON-able values; others are stored as text), atomically.
    A folder that cannot be written is ignored: remembering settings must never break a dock."""
    d = settings_dir()
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{name}.json.tmp"
        tmp.write_text(json.dumps(values, indent=1, default=str))
        os.replace(tmp, d / f"{name}.json")
    except OSError:
        pass
