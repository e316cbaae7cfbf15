"""The shared data sets for the benchmarks (never used by the product): their train and test splits
with cached encodings, the settings each is tagged with (configs/<set>.yaml), and the fixed samples of
their test splits."""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from benchmarks._paths import REPO
from llm4tag.config import Settings, settings_from_dict
from llm4tag.data import Item, Tag, read_items, read_tags
from llm4tag.encoded_text import item_text, tag_text
from llm4tag.encoder import Encoder


@dataclass
class Dataset:
    name: str
    tags: list[Tag]
    train: list[Item]
    test: list[Item]
    tag_vectors: np.ndarray
    train_vectors: np.ndarray
    test_vectors: np.ndarray


def load_dataset(name: str, data_dir: Path, settings: Settings, encoder: Encoder, cache_dir: Path) -> Dataset:
    folder = data_dir / name
    if not (folder / "items.jsonl.gz").is_file():
        raise SystemExit(f"no data set {name!r} in {data_dir} (no {folder / 'items.jsonl.gz'}): see --data")
    tags = read_tags(folder / "tags.jsonl.gz")
    vocabulary = {t.tag for t in tags}
    train = read_items(folder / "items.jsonl.gz", vocabulary=vocabulary, split="train").items
    test = read_items(folder / "items.jsonl.gz", vocabulary=vocabulary, split="test").items
    key = hashlib.sha256(
        json.dumps([encoder.id, settings.texts.model_dump(), len(train), len(test)]).encode()
    ).hexdigest()[:12]
    cache = cache_dir / f"{name}-{key}.npz"
    if cache.exists():
        arrays = np.load(cache)
        tv, trv, tev = arrays["tags"], arrays["train"], arrays["test"]
    else:
        started = time.perf_counter()
        tv = encoder.encode([tag_text(t, settings.texts.tag_description_chars) for t in tags])
        trv = encoder.encode([item_text(i, settings.texts.item_fields) for i in train])
        tev = encoder.encode([item_text(i, settings.texts.item_fields) for i in test])
        seconds = time.perf_counter() - started
        n = len(tags) + len(train) + len(test)
        print(f"# encoded {name}: {n} texts in {seconds:.1f} s ({n / seconds:.0f} texts/s)", flush=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, tags=tv, train=trv, test=tev)
    return Dataset(name, tags, train, test, tv, trv, tev)


def test_sample(ds: Dataset, n: int | None = None, seed: int = 0) -> list[Item]:
    """The first ``n`` test items of a fixed random order (seed 0): growing ``n`` keeps the items
    already drawn, so per-item caches of LLM rows stay valid."""
    order = random.Random(seed).sample(ds.test, len(ds.test))
    return order if n is None else order[:n]


def limit_test(ds: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """The data set with its test split cut to :func:`test_sample`'s first ``limit`` items (and their
    vectors); unchanged, in file order, without a limit."""
    if limit is None:
        return ds
    items = test_sample(ds, limit, seed)
    position = {item.id: n for n, item in enumerate(ds.test)}
    return replace(ds, test=items, test_vectors=ds.test_vectors[[position[i.id] for i in items]])


def dataset_config(name: str) -> dict:
    """The settings a data set is tagged with (configs/<set>.yaml, as a dict); none for a set that
    has no file there."""
    path = REPO / "configs" / f"{name}.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def dataset_settings(name: str, pipeline: dict, model: str, engine: str | None) -> Settings:
    """:func:`dataset_config` with ``pipeline`` merged into its pipeline section and the LLM's
    model (and engine, if given)."""
    data = dataset_config(name)
    data.setdefault("pipeline", {}).update(pipeline)
    data["llm"] = {**data.get("llm", {}), "model": model, **({"engine": engine} if engine else {})}
    return settings_from_dict(data)
