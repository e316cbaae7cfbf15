"""The ``ranking:`` settings section: when a store gets a learned recall and a ranker, and how they
are made."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from llm4tag.config_section import Section
from llm4tag.ranking.features import FewTags
from llm4tag.ranking.learned import LearnedConfig
from llm4tag.ranking.ranker import RankerConfig


class RankingConfig(Section):
    """Learned recall + ranker, fitted at `llm4tag build` and `llm4tag refit` on the store's
    annotations (cross-fitted folds, never test items)."""

    section: ClassVar[str] = "ranking"

    enabled: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto: fit when the store has at least min_items annotated items; on: always "
        "(an error if it cannot); off: never (recall's own order, the paper's pipeline)",
    )
    min_items: int = Field(
        1000,
        ge=10,
        description="annotated items the ranker needs (auto); its figures were measured on 10,000-27,000",
    )
    learned_k: int = Field(10, ge=1, description="learned-recall tags added to graph recall's candidates")
    few_tags: FewTags = Field(
        default_factory=FewTags, description="candidate slots reserved for tags with few annotations"
    )
    target_precision: float = Field(
        0.95,
        gt=0,
        le=1,
        description="the held-out precision (95% confidence) the build reports a cut for",
    )
    cascade_items: int = Field(
        0,
        ge=0,
        description="held-out annotated items the LLM tags to fit route: auto's tau and the final "
        "calibration (0: none at build; `llm4tag refit --cascade-items N` runs it later). Each costs "
        "one LLM call (seconds on a CPU); a few hundred suffice",
    )
    learned: LearnedConfig = Field(default_factory=LearnedConfig, description="the learned recall")
    ranker: RankerConfig = Field(default_factory=RankerConfig, description="the ranker")
