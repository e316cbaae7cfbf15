"""Which adapters are active: one small JSON file that serving follows and promotion rewrites.

``active.json``: ``{"generator": PATH | null, "calibrator": PATH | null, "updated": ISO time, "by": ...}``.
`llm4tag retrain` writes it when it promotes, `POST /v1/admin/adapter` when an operator swaps; the
Generator and Calibrator replicas check its modification before every batch (one stat call) and load a
changed adapter between batches. It is replaced atomically (graph_store.durable: temp file, rename,
folder fsync), so a reader sees the old or the new file, never a mix.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graph_store.durable import write_atomically
from llm4tag.errors import LLM4TagError

ROLES = ("generator", "calibrator")


def read_active(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.exists():
        return {role: None for role in ROLES}
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise LLM4TagError(f"cannot read the active adapters file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise LLM4TagError(f"{path}: the active adapters file must hold a JSON object")
    return {**data, **{role: data.get(role) for role in ROLES}}


def write_active(path: str | Path, updates: dict[str, str | None], by: str) -> dict[str, Any]:
    """Set the given roles' adapters (None: base model), keep the others; atomic replace."""
    unknown = sorted(set(updates) - set(ROLES))
    if unknown:
        raise LLM4TagError(f"unknown adapter role(s): {', '.join(unknown)}")
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    data = read_active(file)
    data.update({role: (str(Path(p).resolve()) if p else None) for role, p in updates.items()})
    data["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    data["by"] = by
    write_atomically(file, (json.dumps(data, indent=1) + "\n").encode())
    return data


class ActiveAdapters:
    """Follows an active.json: ``changed()`` returns its content when it changed since the last call."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None

    def changed(self) -> dict[str, Any] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        if key == self._seen:
            return None
        data = read_active(self.path)
        self._seen = key
        return data
