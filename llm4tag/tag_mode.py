"""Single- or multi-tag: the one rule (``pipeline.mode: auto``) that the pipeline, the baselines, the
training data and the ranker all decide by."""

from __future__ import annotations

from collections.abc import Sequence

MODES = ("auto", "single", "multi")
# pipeline.mode auto: multi-tag when the annotated items carry more tags than this on average.
MULTI_TAG_MEAN = 1.2


def resolve_mode(mode: str, tags_per_item: Sequence[float]) -> str:
    """``single`` or ``multi`` for a configured mode; ``auto`` decides from the annotations' mean."""
    if mode != "auto":
        return mode
    mean = sum(tags_per_item) / len(tags_per_item) if len(tags_per_item) else 0.0
    return "multi" if mean > MULTI_TAG_MEAN else "single"
