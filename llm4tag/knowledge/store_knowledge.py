"""A store's two knowledge bases (``STORE/knowledge/samples`` and ``STORE/knowledge/domain``), opened
once the same way by every process that reads or writes them: the in-process pipeline, the LLM
stages (which retrieve from them) and the Serve ingress (which records feedback's samples and shows
retrieved entries, whether or not an LLM replica is up).

Every holder follows the bases' logs, so a sample one process records is seen by all of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm4tag.knowledge.bases import DomainKnowledgeBase, SampleKnowledgeBase
from llm4tag.knowledge.entries import Sample

KNOWLEDGE_DIR = "knowledge"


@dataclass
class StoreKnowledge:
    """The sample base and the domain base of a store (None: the store has no such base)."""

    samples: SampleKnowledgeBase | None
    domain: DomainKnowledgeBase | None

    @classmethod
    def open(cls, store_dir: str | os.PathLike, encoder_id: str, *, writable: bool = False) -> StoreKnowledge:
        """``writable``: additions are durable (fsynced into the base's log) before they return."""
        folder = Path(store_dir) / KNOWLEDGE_DIR
        samples = domain = None
        if (folder / "samples").exists():
            samples = SampleKnowledgeBase.load(
                folder / "samples", expected_encoder_id=encoder_id, writable=writable
            )
        if (folder / "domain").exists():
            domain = DomainKnowledgeBase.load(
                folder / "domain", expected_encoder_id=encoder_id, writable=writable
            )
        return cls(samples, domain)

    def refresh(self) -> None:
        """Apply what other processes appended to the bases' logs."""
        for base in (self.samples, self.domain):
            if base is not None:
                base.refresh()

    def record_samples(self, samples: Sequence[Sample], vectors: np.ndarray) -> int:
        """Upsert samples (feedback) into the sample base; the number recorded (0: the store has none)."""
        if self.samples is None:
            return 0
        self.samples.add(samples, vectors)
        return len(samples)

    def entries(self, sample_ids: Sequence[str], snippet_ids: Sequence[str]) -> dict:
        """Samples and snippets by id, as their records (what the review UI shows of a prompt); ids
        not found are left out."""
        self.refresh()
        found: dict[str, dict] = {"samples": {}, "snippets": {}}
        for key, base, ids in (("samples", self.samples, sample_ids), ("snippets", self.domain, snippet_ids)):
            if base is None:
                continue
            for entry_id in ids:
                entry = base.get(entry_id)
                if entry is not None:
                    found[key][entry_id] = entry.to_record()
        return found
