"""The cascade's fit on a built store: the LLM's outcomes on held-out annotated items
(llm4tag/ranking/heldout_llm.py), then route: auto's tau and the final calibration fitted on them
(llm4tag/ranking/cascade.py) and saved beside the ranking. Here, above both the store builder and the
pipeline, because it runs the pipeline on what the builder made (`llm4tag build` with
ranking.cascade_items, `llm4tag refit --cascade-items N`)."""

from __future__ import annotations

import time
from pathlib import Path

from llm4tag.config import Settings
from llm4tag.engines import Engine
from llm4tag.errors import LLM4TagError
from llm4tag.pipeline import TaggingPipeline
from llm4tag.ranking.cascade import fit_cascade
from llm4tag.ranking.heldout_llm import OUTCOMES, choose_items, run_held_out
from llm4tag.ranking.store_routing import ranking_dir, save_cascade
from llm4tag.store_builder import store_annotations


def fit_store_cascade(
    store_dir: str | Path,
    settings: Settings,
    items: int,
    seed: int = 0,
    chunk: int = 8,
    engine: Engine | None = None,
) -> dict:
    """The LLM tags ``items`` of the store's annotated items, each with its out-of-fold candidates
    and without itself among the retrieved samples (llm4tag/ranking/heldout_llm.py); route: auto's
    tau and the final calibration are fitted on what it did, and saved beside the ranking. Resumes
    from the outcomes an interrupted run wrote. ``engine``: an LLM already loaded with these settings."""
    pipeline = TaggingPipeline.open(
        store_dir, settings.with_overrides({"pipeline": {"route": "off"}}), engine=engine
    )
    if pipeline.ranking is None:
        raise LLM4TagError("this store has no fitted ranking: the cascade is fitted on its held-out items")
    models = pipeline.ranking.models
    stored, vectors = store_annotations(pipeline.recaller.store)
    texts = {i.id: i.text for i in stored}
    by_id = {i.id: v for i, v in zip(stored, vectors, strict=True)}
    chosen = choose_items(models.held_out, items, seed)
    folder = ranking_dir(store_dir)
    started = time.perf_counter()
    outcomes = run_held_out(
        pipeline,
        chosen,
        texts,
        by_id,
        settings.graph.recall.num_candidates,
        folder / OUTCOMES,
        chunk=chunk,
    )
    fit = fit_cascade(outcomes, models.multi, models.emit, settings.pipeline.threshold)
    save_cascade(folder, fit, models)
    return {
        "held_out_items": len(outcomes),
        "seconds": round(time.perf_counter() - started, 1),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in fit.metrics.items()},
    }
