"""YSO-Finna (library subject indexing, 27,754 concepts) for the benchmarks: nested seeded samples of
its train split, a fixed sample of its test split, the files ``llm4tag build`` reads, and their
encodings cached in chunks (never used by the product).

The train split is put in one seeded order; a sample of n items is its first n, so the 10k sample
is inside the 30k one, which is inside the 100k one, and encodings made for one serve the others.
The cache is written 10,000 texts a file, in that order, so an interrupted encoding resumes and a
sample needs only its own chunks. Test items are never in a sample's train part: they come from the
data set's own ``split: test`` items.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm4tag.config import Settings
from llm4tag.data import Item, Tag, read_items, read_tags
from llm4tag.encoded_text import item_text, tag_text
from llm4tag.encoder import Encoder

NAME = "yso_finna_en_dev"
CHUNK = 10_000


@dataclass
class YsoSample:
    tags: list[Tag]
    train: list[Item]
    test: list[Item]
    tag_vectors: np.ndarray | None = None
    train_vectors: np.ndarray | None = None
    test_vectors: np.ndarray | None = None


def _ordered(data_dir: Path, seed: int) -> tuple[list[Tag], list[Item], list[Item]]:
    folder = data_dir / NAME
    tags = read_tags(folder / "tags.jsonl.gz")
    vocabulary = {t.tag for t in tags}
    items = read_items(folder / "items.jsonl.gz", vocabulary=vocabulary).items
    train = sorted((i for i in items if i.extra.get("split") == "train"), key=lambda i: i.id)
    test = sorted((i for i in items if i.extra.get("split") == "test"), key=lambda i: i.id)
    random.Random(seed).shuffle(train)
    random.Random(seed + 1).shuffle(test)
    return tags, train, test


def load_sample(
    data_dir: Path,
    train_items: int | None,
    test_items: int | None,
    *,
    seed: int = 0,
    encoder: Encoder | None = None,
    settings: Settings | None = None,
    cache_dir: Path | None = None,
    encode_train: bool = True,
) -> YsoSample:
    """The first ``train_items`` of the seeded train order (None: all) and ``test_items`` of the test
    split; with ``encoder``, their vectors from the chunked cache (encoding what is missing; the
    train items' only with ``encode_train``)."""
    tags, train, test = _ordered(data_dir, seed)
    sample = YsoSample(tags, train[:train_items], test[:test_items])
    if encoder is None:
        return sample
    settings = settings or Settings()
    cache = ChunkCache(cache_dir or Path(".bench-cache"), encoder, settings, seed)
    fields, chars = settings.texts.item_fields, settings.texts.tag_description_chars
    sample.tag_vectors = cache.vectors("tags", [tag_text(t, chars) for t in tags])
    # Whole chunks of the full order are encoded, so every sample size reads the same files.
    sample.test_vectors = cache.vectors("test", [item_text(i, fields) for i in test], len(sample.test))
    if encode_train:
        sample.train_vectors = cache.vectors(
            "train", [item_text(i, fields) for i in train], len(sample.train)
        )
    return sample


class ChunkCache:
    """Encodings of one ordered list of texts, CHUNK texts a file; a file's name carries a digest of
    its texts, so a changed order or text setting never reads stale vectors."""

    def __init__(self, folder: Path, encoder: Encoder, settings: Settings, seed: int):
        self.folder = folder / f"{NAME}-chunks"
        self.encoder = encoder
        self.tag = hashlib.sha256(
            json.dumps([encoder.id, settings.texts.model_dump(), seed]).encode()
        ).hexdigest()[:10]

    def vectors(self, part: str, texts: list[str], n: int | None = None) -> np.ndarray:
        n = len(texts) if n is None else n
        self.folder.mkdir(parents=True, exist_ok=True)
        out = []
        for start in range(0, n, CHUNK):
            chunk = texts[start : start + CHUNK]
            digest = hashlib.sha256("\n".join(chunk).encode()).hexdigest()[:10]
            path = self.folder / f"{part}-{self.tag}-{start // CHUNK:03d}-{digest}.npy"
            if path.exists():
                out.append(np.load(path))
                continue
            started = time.perf_counter()
            vectors = self.encoder.encode(chunk)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, vectors)
            tmp.replace(path)
            seconds = time.perf_counter() - started
            print(
                f"# encoded {part} chunk {start // CHUNK}: {len(chunk)} texts in {seconds:.0f} s", flush=True
            )
            out.append(vectors)
        return np.concatenate(out)[:n] if out else np.zeros((0, self.encoder.dim), np.float32)


def write_items(path: Path, sample: YsoSample) -> Path:
    """The sample as one items file (train and test rows with their ``split``), for ``llm4tag build
    --split train`` and ``llm4tag tag --split test``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for item in [*sample.train, *sample.test]:
            row = {"id": item.id, "text": item.text, "tags": list(item.tags or ()), **item.extra}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
