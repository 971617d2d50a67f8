"""One rule for every command that writes a resumable run folder: ``DIR/config.json`` holds the
settings that decide the result, and a rerun into the same folder must ask for the same ones."""

from __future__ import annotations

import json
from pathlib import Path


def check_run_config(path: Path, config: dict, *, overwrite: bool = False) -> bool:
    """Compare ``config`` with the run's ``path`` (a config.json). Returns True when the caller
    must write it (no file yet, or ``overwrite``), False when the file holds the same settings;
    raises ValueError naming the settings that differ otherwise."""
    path = Path(path)
    if overwrite or not path.is_file():
        return True
    held = json.loads(path.read_text())
    config = json.loads(json.dumps(config))  # tuples → lists, as the file holds them
    if held == config:
        return False
    differ = sorted(k for k in set(held) | set(config) if held.get(k) != config.get(k))
    raise ValueError(f"{path.parent} holds a run with other settings ({', '.join(differ)} differ): use another "
                     "--out, or the same settings to resume")
