"""Learned recall: a supervised multi-label model trained on a store's annotations proposes and scores
tags (provenance ``learned``), beside the graph's C2T and C2C2T paths.

The model is Omikuji's Parabel (partitioned label trees with linear classifiers at the nodes, the
library Annif's Omikuji backend runs) over a TF-IDF bag of words (scikit-learn), optionally with the
item's sentence embedding appended as dense features. ``kind="linear"`` is scikit-learn's one-vs-rest
logistic regression over the same features, kept so the choice stays measurable
(benchmarks/learned_recall.py): see ``DEFAULT_KIND`` for the measured reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from llm4tag.config_section import Section
from llm4tag.errors import LLM4TagError
from llm4tag.ranking.provenance import LeakError, check_manifest, data_hash, new_folder, write_manifest

KINDS = ("omikuji", "linear")
# Measured on a held-out fifth of each shared train split (benchmarks/learned_recall.py): see the
# README's ranker section. Parabel over words + embeddings ranked best or level on every set and
# fits in seconds; one-vs-rest logistic regression was slower to fit and no better.
DEFAULT_KIND = "omikuji"
_TOKEN = re.compile(r"(?u)\b\w+\b")


class LearnedConfig(Section):
    """The learned recall: Parabel label trees (omikuji) over TF-IDF words and the item embedding."""

    section: ClassVar[str] = "ranking.learned"

    kind: Literal["omikuji", "linear"] = Field(
        DEFAULT_KIND, description="omikuji: Parabel label trees; linear: one-vs-rest logistic regression"
    )
    top_k: int = Field(20, ge=1, description="tags proposed per item")
    ngram_max: int = Field(2, ge=1, description="word n-grams of the TF-IDF, 1..ngram_max")
    min_df: int = Field(1, ge=1, description="TF-IDF: words in fewer items are dropped")
    embeddings: bool = Field(
        True, description="append the item's unit embedding to the TF-IDF (slower fit, better on 2 of 3 sets)"
    )
    embedding_weight: float = Field(1.0, gt=0, description="scale of the appended embedding")
    # Parabel's cost grows with items x dense columns: appending all 384 took 8x the CPU of words alone
    # on 10,000 YSO titles, and would take most of a 100,000-title build; 64 directions cost 2x and
    # kept most of the gain (YSO, 30,000 titles: top-1 precision 0.118 words, 0.173 with 32, 0.188
    # with 64; docs/performance.md). The shared sets (at most 27,216 items) keep the whole embedding.
    embedding_dims: int | None = Field(
        64,
        ge=1,
        description="stores with more than embedding_dims_above annotated items append the embedding's "
        "projection on its first this many singular directions (fitted on the training items) instead "
        "of all of it; null: always all",
    )
    embedding_dims_above: int = Field(
        50_000, ge=0, description="annotated items above which embedding_dims applies"
    )
    n_trees: int = Field(3, ge=1, description="Parabel's ensemble of trees (omikuji's default)")
    cluster_k: int = Field(2, ge=2, description="Parabel: children per tree node")
    max_depth: int = Field(20, ge=1, description="Parabel: tree depth")
    linear_c: float = Field(1.0, gt=0, description="linear: inverse regularisation strength")
    threads: int = Field(1, ge=1, description="fitting threads")
    seed: int = Field(
        0,
        description="linear's seed; omikuji takes none (its k-means starts from OS entropy): fits differ",
    )


def for_store(config: LearnedConfig, items: int) -> LearnedConfig:
    """The settings every fit of one store uses (its folds' and the final one alike, so that held-out
    features and served ones come from the same kind of model): the projection applies by the store's
    size, not a fold's."""
    if config.embedding_dims is not None and items <= config.embedding_dims_above:
        return config.with_overrides({"embedding_dims": None})
    return config


@dataclass
class LearnedRecall:
    """A fitted learned-recall model: ``predict`` returns per item the ``(tag, score)`` of its top tags."""

    config: LearnedConfig
    tags: list[str]
    vectorizer: object
    model: object
    encoder_id: str
    trained_ids: frozenset[str]
    data_hash: str
    fit_seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    projection: np.ndarray | None = None  # (embedding_dims, dim): the embedding's kept directions

    # -- fitting ----------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        *,
        ids: Sequence[str],
        texts: Sequence[str],
        vectors: np.ndarray,
        item_tags: Sequence[Sequence[str]],
        tags: Sequence[str],
        encoder_id: str,
        config: LearnedConfig | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> LearnedRecall:
        """Fit on the annotated items. ``exclude_ids``: items that must not be among them (a held-out
        fold, the test split); finding one raises LeakError before anything is fitted."""
        config = config or LearnedConfig()
        if not (len(ids) == len(texts) == len(vectors) == len(item_tags)):
            raise LLM4TagError("ids, texts, vectors and item_tags must have the same length")
        leaked = set(exclude_ids) & set(ids)
        if leaked:
            raise LeakError(
                f"{len(leaked)} held-out item(s) among the training items, e.g. {sorted(leaked)[0]!r}"
            )
        tag_pos = {t: i for i, t in enumerate(tags)}
        labels = [[tag_pos[t] for t in item if t in tag_pos] for item in item_tags]
        keep = [i for i, row in enumerate(labels) if row]
        if not keep:
            raise LLM4TagError("no annotated item with a known tag to fit the learned recall on")
        started = time.perf_counter()
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(
            ngram_range=(1, config.ngram_max),
            min_df=config.min_df,
            sublinear_tf=True,
            token_pattern=_TOKEN.pattern,
            dtype=np.float32,
        )
        words = vectorizer.fit_transform([texts[i] for i in keep])
        kept_vectors = np.asarray(vectors, np.float32)[keep]
        projection = _projection(kept_vectors, config)
        features = _features(words, kept_vectors, config, projection)
        kept_labels = [labels[i] for i in keep]
        if config.kind == "omikuji":
            model = _fit_omikuji(features, kept_labels, len(tags), config)
        else:
            model = _fit_linear(features, kept_labels, len(tags), config)
        return cls(
            config=config,
            tags=list(tags),
            vectorizer=vectorizer,
            model=model,
            encoder_id=encoder_id,
            trained_ids=frozenset(ids),
            data_hash=data_hash(ids, texts, item_tags),
            fit_seconds=time.perf_counter() - started,
            projection=projection,
        )

    # -- prediction -------------------------------------------------------------------------------
    def predict(
        self, texts: Sequence[str], vectors: np.ndarray, k: int | None = None
    ) -> list[list[tuple[str, float]]]:
        k = k or self.config.top_k
        if len(texts) != len(vectors):
            raise LLM4TagError("texts and vectors must have the same length")
        if not len(texts):
            return []
        features = _features(
            self.vectorizer.transform(list(texts)),
            np.asarray(vectors, np.float32),
            self.config,
            self.projection,
        )
        if self.config.kind == "omikuji":
            out = []
            for row in range(features.shape[0]):
                start, end = features.indptr[row], features.indptr[row + 1]
                pairs = list(
                    zip(features.indices[start:end].tolist(), features.data[start:end].tolist(), strict=True)
                )
                hits = self.model.predict(pairs, top_k=k) if pairs else []
                out.append([(self.tags[label], float(score)) for label, score in hits])
            return out
        scores = self.model["ovr"].predict_proba(features)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        classes = self.model["classes"]
        return [[(self.tags[int(classes[c])], float(scores[r, c])) for c in row] for r, row in enumerate(top)]

    def assert_unseen(self, ids: Sequence[str]) -> None:
        """Raise LeakError if any of ``ids`` was a training item (e.g. before scoring a test split)."""
        seen = self.trained_ids.intersection(ids)
        if seen:
            raise LeakError(
                f"{len(seen)} item(s) to score were training items of the learned recall, "
                f"e.g. {sorted(seen)[0]!r}"
            )

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model into ``folder`` whole or not at all (a temporary folder, then a rename)."""
        import joblib

        with new_folder(folder) as tmp:
            joblib.dump(self.vectorizer, tmp / "vectorizer.joblib")
            if self.config.kind == "omikuji":
                self.model.save(str(tmp / "omikuji"))
            else:
                joblib.dump(self.model, tmp / "linear.joblib")
            (tmp / "trained_ids.json").write_text(json.dumps(sorted(self.trained_ids)))
            if self.projection is not None:
                np.save(tmp / "projection.npy", self.projection)
            write_manifest(
                tmp,
                kind="learned_recall",
                encoder_id=self.encoder_id,
                data_hash=self.data_hash,
                settings=self.config.model_dump(),
                extra={"tags": self.tags, "fit_seconds": self.fit_seconds, "metrics": self.metrics},
            )
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, expected_encoder_id: str) -> LearnedRecall:
        import joblib

        folder = Path(folder)
        manifest = check_manifest(folder, kind="learned_recall", expected_encoder_id=expected_encoder_id)
        config = LearnedConfig.load(manifest["settings"])
        if config.kind == "omikuji":
            import omikuji

            with _quiet_output():
                model = omikuji.Model.load(str(folder / "omikuji"))
                _densify(model)
        else:
            model = joblib.load(folder / "linear.joblib")
        return cls(
            config=config,
            tags=list(manifest["tags"]),
            vectorizer=joblib.load(folder / "vectorizer.joblib"),
            model=model,
            encoder_id=manifest["encoder_id"],
            trained_ids=frozenset(json.loads((folder / "trained_ids.json").read_text())),
            data_hash=manifest["data_hash"],
            fit_seconds=float(manifest.get("fit_seconds", 0.0)),
            metrics=dict(manifest.get("metrics") or {}),
            projection=np.load(folder / "projection.npy") if (folder / "projection.npy").exists() else None,
        )


__all__ = ["DEFAULT_KIND", "KINDS", "LearnedConfig", "LearnedRecall", "for_store"]


def _projection(vectors: np.ndarray, config: LearnedConfig) -> np.ndarray | None:
    """The embedding's first ``embedding_dims`` right singular directions (uncentred, so dot products
    keep their meaning), or None to append the embedding whole."""
    if not config.embeddings or not config.embedding_dims or config.embedding_dims >= vectors.shape[1]:
        return None
    from sklearn.decomposition import TruncatedSVD

    svd = TruncatedSVD(n_components=config.embedding_dims, random_state=config.seed).fit(vectors)
    return svd.components_.astype(np.float32)


def _features(
    words: sp.csr_matrix, vectors: np.ndarray, config: LearnedConfig, projection: np.ndarray | None
) -> sp.csr_matrix:
    words = sp.csr_matrix(words, dtype=np.float32)
    if not config.embeddings:
        return words
    if projection is not None:
        vectors = vectors @ projection.T
    dense = sp.csr_matrix(vectors * np.float32(config.embedding_weight))
    return sp.hstack([words, dense], format="csr", dtype=np.float32)


def _fit_omikuji(features: sp.csr_matrix, labels: list[list[int]], n_labels: int, config: LearnedConfig):
    import omikuji

    hyper = omikuji.Model.default_hyper_param()
    hyper.n_trees = config.n_trees
    hyper.cluster_k = config.cluster_k
    hyper.max_depth = config.max_depth
    # Omikuji reads its training data from a file in the Extreme Classification Repository format.
    with tempfile.TemporaryDirectory(prefix="llm4tag-omikuji-") as tmp:
        path = Path(tmp) / "train.txt"
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f"{features.shape[0]} {features.shape[1]} {n_labels}\n")
            for row, row_labels in enumerate(labels):
                start, end = features.indptr[row], features.indptr[row + 1]
                cols = features.indices[start:end]
                vals = features.data[start:end]
                pairs = " ".join(f"{c}:{v:.6g}" for c, v in zip(cols.tolist(), vals.tolist(), strict=True))
                fh.write(f"{','.join(map(str, sorted(set(row_labels))))} {pairs}\n")
        with _quiet_output():
            model = omikuji.Model.train_on_data(str(path), hyper, config.threads or None)
            _densify(model)
            return model


def _fit_linear(features: sp.csr_matrix, labels: list[list[int]], n_labels: int, config: LearnedConfig):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    binarizer = MultiLabelBinarizer(classes=sorted({t for row in labels for t in row}))
    y = binarizer.fit_transform(labels)
    model = OneVsRestClassifier(
        LogisticRegression(C=config.linear_c, solver="liblinear", random_state=config.seed),
        n_jobs=config.threads,
    )
    model.fit(features, y)
    # predict_proba's columns follow the binarizer's classes (tag positions).
    return {"ovr": model, "classes": np.asarray(binarizer.classes_)}


def _densify(model) -> None:
    # Omikuji stores the dense-ish weight vectors (the appended embedding's) as dense arrays: 15% less
    # prediction time on YSO titles, the same predictions, a negligible memory cost.
    model.densify_weights(0.1)


@contextlib.contextmanager
def _quiet_output():
    """Omikuji's Rust core logs to file descriptor 1 and draws progress bars on 2, with no switch."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in saved:
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)
