"""What every fitted model of the ranking package records about itself, and the checks on it.

A model folder holds ``manifest.json``: the kind of model, the encoder id whose vectors it read (a
model is refused under another encoder: its features would mean something else), a hash of the
annotated data it was fitted on, its settings and its held-out metrics. Fitted models also keep the
ids of their training items, so scoring an item they were trained on is caught (``LeakError``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from graph_store import EncoderMismatchError
from graph_store.durable import atomic_folder, recover_folder, write_file
from llm4tag.errors import LLM4TagError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class LeakError(LLM4TagError):
    """An item a model is asked to score (or to be evaluated on) was among its training items."""


def data_hash(ids: Sequence[str], texts: Sequence[str], item_tags: Sequence[Sequence[str]]) -> str:
    """A digest of annotated items, independent of their order."""
    rows = sorted(
        json.dumps([i, t, sorted(tags)], ensure_ascii=False)
        for i, t, tags in zip(ids, texts, item_tags, strict=True)
    )
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def write_manifest(
    folder: Path, *, kind: str, encoder_id: str, data_hash: str, settings: dict, extra: dict | None = None
) -> None:
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "encoder_id": encoder_id,
        "data_hash": data_hash,
        "settings": settings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    write_file(folder / MANIFEST, json.dumps(manifest, indent=2, default=_json_default).encode("utf-8"))


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LLM4TagError(f"{folder} holds no readable fitted model ({MANIFEST}: {exc})") from exc


def check_manifest(folder: Path, *, kind: str, expected_encoder_id: str) -> dict:
    manifest = read_manifest(folder)
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("kind") != kind:
        raise LLM4TagError(
            f"{folder} holds a {manifest.get('kind')!r} model of format {manifest.get('format_version')}, "
            f"not a {kind!r} model of format {FORMAT_VERSION}"
        )
    if manifest.get("encoder_id") != expected_encoder_id:
        raise EncoderMismatchError(
            f"the {kind} model in {folder} was fitted on vectors of encoder '{manifest.get('encoder_id')}', "
            f"but the encoder in use is '{expected_encoder_id}'; refit it with this encoder"
        )
    return manifest


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"cannot write {type(value).__name__} to a manifest")


@contextlib.contextmanager
def new_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder to write a model into; on success it replaces ``target`` whole (fsynced), on
    failure ``target`` stays as it was (graph_store.durable.atomic_folder)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    with atomic_folder(target) as tmp:
        yield tmp
