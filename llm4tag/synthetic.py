"""Synthetic example items (`llm4tag augment`): short items the LLM wrote for a tag with few real
annotations, kept in ``STORE/synthetic/examples.jsonl`` with provenance ``synthetic``.

They are training data and nothing else: the learned recall is fitted on them (and so, through its
candidates, are the ranker's rows), but they are never held out in the cross-fit, never gold in an
evaluation and never retrieved samples in a prompt (they do not enter the sample knowledge base).
Their ids start with ``syn:``, which every real item's id is refused (llm4tag/item_rules.py), so no
file, request or gold set can pass for one; :func:`check_not_synthetic` guards the cross-fit's
held-out rows besides (a store written before that rule could hold such an id).

The file is an append log (graph_store/durable): each tag's examples are appended in one write
together with a commit record for their batch, and a reader takes the examples of committed batches
only, so an augmentation killed mid-tag leaves nothing of that tag that counts and a rerun writes it
again. Removing a tag's examples rewrites the file atomically (the old file or the new, never half).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from graph_store.durable import AppendLog, fsync_dir
from llm4tag.errors import LLM4TagError
from llm4tag.item_rules import SYNTHETIC_ID_PREFIX

SYNTHETIC_DIR = "synthetic"
EXAMPLES_FILE = "examples.jsonl"
PROVENANCE = "synthetic"


class SyntheticLeakError(LLM4TagError):
    """A synthetic example was found among held-out or gold rows."""


def synthetic_id(tag: str, n: int) -> str:
    """The stable id of a tag's n-th synthetic example."""
    return f"{SYNTHETIC_ID_PREFIX}{tag}:{n}"


def is_synthetic(item_id: str) -> bool:
    return str(item_id).startswith(SYNTHETIC_ID_PREFIX)


def check_not_synthetic(ids: Iterable[str], where: str) -> None:
    """Raise :class:`SyntheticLeakError` when an id with the synthetic prefix is among ``ids`` (rows held
    out of a fit, or gold rows of an evaluation: ``where`` names them)."""
    leaked = [i for i in ids if is_synthetic(i)]
    if leaked:
        raise SyntheticLeakError(
            f"{len(leaked)} synthetic example(s) among {where}, e.g. {leaked[0]!r}: synthetic examples "
            "are training data only, never held out or gold"
        )


@dataclass(frozen=True)
class Example:
    """One synthetic example item."""

    id: str
    tag: str
    text: str
    model: str
    prompt_version: str
    created: str
    batch: str
    provenance: str = PROVENANCE

    def to_record(self) -> dict:
        return {"kind": "example", **asdict(self)}

    @classmethod
    def from_record(cls, record: Mapping) -> Example:
        return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})


@dataclass(frozen=True)
class Batch:
    """The commit record of one tag's examples, written after them in the same append: the LLM was
    asked for ``k`` examples of ``tag`` in total (its answer gave ``written`` more)."""

    batch: str
    tag: str
    k: int
    written: int
    model: str
    prompt_version: str
    created: str

    def to_record(self) -> dict:
        return {"kind": "batch", **asdict(self)}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SyntheticExamples:
    """A store's synthetic examples (``STORE/synthetic/examples.jsonl``)."""

    def __init__(self, store_dir: str | os.PathLike):
        self.path = Path(store_dir) / SYNTHETIC_DIR / EXAMPLES_FILE
        self._log = AppendLog(self.path)

    def _records(self) -> list[dict]:
        if not self.path.exists():
            return []
        _, _, data = self._log.read(None, 0)  # complete lines only: a torn last line is no record
        records = []
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
                if record.get("kind") not in ("example", "batch"):
                    raise ValueError(f"unknown kind {record.get('kind')!r}")
            except (ValueError, AttributeError) as exc:
                raise LLM4TagError(
                    f"{self.path}, line {number}: not a synthetic-example record ({exc})"
                ) from None
            records.append(record)
        return records

    def _committed(self, records: Sequence[dict]) -> tuple[list[Example], dict[str, int]]:
        """The examples of committed batches, and per tag the most examples any batch asked for."""
        batches = {r["batch"]: r for r in records if r["kind"] == "batch"}
        examples = [
            Example.from_record(r) for r in records if r["kind"] == "example" and r["batch"] in batches
        ]
        asked: dict[str, int] = {}
        for record in batches.values():
            asked[record["tag"]] = max(asked.get(record["tag"], 0), int(record["k"]))
        return examples, asked

    def read(self) -> list[Example]:
        """Every committed example, in the order written."""
        return self._committed(self._records())[0]

    def by_tag(self) -> dict[str, list[Example]]:
        out: dict[str, list[Example]] = {}
        for example in self.read():
            out.setdefault(example.tag, []).append(example)
        return out

    def asked(self) -> dict[str, int]:
        """Per tag, the most examples an augmentation asked the LLM for (a tag asked for k already is
        done for k, whatever its answer gave: asking again would get the same answer)."""
        return self._committed(self._records())[1]

    def append(
        self, tag: str, texts: Sequence[str], k: int, model: str, prompt_version: str
    ) -> list[Example]:
        """Add ``texts`` as the next examples of ``tag`` (ids continue its committed ones) and commit
        them, in one durable append; also commits a batch with no text (the LLM gave nothing usable),
        so that the tag counts as asked for ``k``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.path.parent.parent)
        with self._log.locked():
            records = self._records()
            committed = {r["batch"] for r in records if r["kind"] == "batch"}
            if any(r["batch"] not in committed for r in records):
                # A writer killed inside its append left examples without their commit: they count
                # for nothing, and go before this batch reuses their ids.
                self._write([r for r in records if r["batch"] in committed])
            start = sum(1 for e in self._committed(records)[0] if e.tag == tag)
            created, batch = _now(), uuid.uuid4().hex[:12]
            examples = [
                Example(synthetic_id(tag, start + n), tag, text, model, prompt_version, created, batch)
                for n, text in enumerate(texts)
            ]
            commit = Batch(batch, tag, k, len(examples), model, prompt_version, created)
            lines = [
                json.dumps(r, ensure_ascii=False)
                for r in (*[e.to_record() for e in examples], commit.to_record())
            ]
            self._log.append(("\n".join(lines) + "\n").encode("utf-8"))
        return examples

    def remove(self, tags: Iterable[str] | None = None) -> int:
        """Remove every record of ``tags`` (None: all), atomically; the number of examples removed."""
        if not self.path.exists():
            return 0
        with self._log.locked():
            records = self._records()
            gone = None if tags is None else set(tags)
            kept = [] if gone is None else [r for r in records if r["tag"] not in gone]
            removed = sum(1 for e in self._committed(records)[0] if gone is None or e.tag in gone)
            self._write(kept)
        return removed

    def _write(self, records: Sequence[dict]) -> None:
        """Replace the file with ``records``, atomically (under the log's lock)."""
        self._log.replace("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))

    def for_fitting(self, real_counts: Mapping[str, int], min_annotations: int) -> list[Example]:
        """The examples a fit uses: per tag, as many as it lacks real annotations to reach
        ``min_annotations`` (its first ones), so real annotations replace them as feedback arrives and
        a tag with ``min_annotations`` real ones uses none."""
        out = []
        for tag, examples in self.by_tag().items():
            out.extend(examples[: max(0, min_annotations - int(real_counts.get(tag, 0)))])
        return out
