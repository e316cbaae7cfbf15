"""Fine-tuning examples on disk: one JSONL file per role plus a manifest (hashes, counts), written
whole or not at all. Light on purpose: the train stage (possibly on a GPU machine without faiss or
igraph) imports only this, torch, transformers and peft."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph_store.durable import atomic_folder, recover_folder
from llm4tag.engines.base import Messages
from llm4tag.errors import LLM4TagError

DATA_FORMAT = "llm4tag-train-data"
DATA_VERSION = 1
FILES = {"generator": "generator.jsonl", "calibrator": "calibrator.jsonl"}
MANIFEST = "manifest.json"
ROLES = ("generator", "calibrator")


@dataclass
class Example:
    role: str  # generator | calibrator
    id: str  # the item's id
    messages: Messages
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "id": self.id,
            "messages": self.messages,
            "answer": self.answer,
            "meta": self.meta,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Example:
        return cls(record["role"], record["id"], record["messages"], record["answer"], record.get("meta", {}))


def _canonical(example: Example) -> bytes:
    return (json.dumps(example.to_record(), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def write_training_data(
    out_dir: str | Path, examples: dict[str, list[Example]], manifest: dict[str, Any]
) -> dict[str, Any]:
    """The examples as JSONL per role plus manifest.json, written into a temporary folder beside
    ``out_dir`` and renamed into place: a reader sees all of it or none. Returns the manifest."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(out)
    with atomic_folder(out) as temp:
        digest = hashlib.sha256()
        hashes = {}
        for role in ROLES:
            part = hashlib.sha256()
            with open(temp / FILES[role], "wb") as fh:
                for example in examples.get(role, []):
                    line = _canonical(example)
                    fh.write(line)
                    part.update(line)
            hashes[role] = part.hexdigest()
            digest.update(part.digest())
        manifest = {
            "format": DATA_FORMAT,
            "version": DATA_VERSION,
            **manifest,
            "hash": digest.hexdigest(),
            "hashes": hashes,
            "counts": {r: len(examples.get(r, [])) for r in ROLES},
        }
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    return manifest


def read_training_data(data_dir: str | Path, role: str) -> tuple[list[Example], dict[str, Any]]:
    folder = Path(data_dir)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise LLM4TagError(
            f"{data_dir} is not a training data folder (no {MANIFEST}; run `llm4tag train-data`)"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != DATA_FORMAT:
        raise LLM4TagError(f"{manifest_path} is not an llm4tag training data manifest")
    examples = []
    with open(folder / FILES[role], encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            try:
                examples.append(Example.from_record(json.loads(line)))
            except (ValueError, KeyError) as exc:
                raise LLM4TagError(
                    f"{folder / FILES[role]}, line {line_no}: not a training example ({exc})"
                ) from exc
    if not examples:
        raise LLM4TagError(f"{folder / FILES[role]} holds no {role} examples")
    return examples, manifest
