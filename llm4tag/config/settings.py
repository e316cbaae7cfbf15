"""Settings as data: one YAML file (or none, for the defaults) configures every stage.

The sections are pydantic models (graph_store.config.ConfigModel, the one config mechanism) that live
with the code they configure and are gathered here; docs/configuration.md is generated from their
field descriptions (llm4tag/config_reference.py, checked by tests/test_config.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from graph_store import GraphConfig
from graph_store.config import read_yaml
from llm4tag.config.finetune import FinetuneConfig
from llm4tag.config_section import Section
from llm4tag.encoder import EncoderConfig
from llm4tag.engines.config import LLMConfig
from llm4tag.errors import ConfigError
from llm4tag.prompts import AugmentPromptConfig, PeerPromptConfig, PromptConfig
from llm4tag.ranking.config import RankingConfig
from llm4tag.tag_mode import MULTI_TAG_MEAN


class TextConfig(Section):
    """Which text represents a vertex (the paper: title and category of a content, tag description)."""

    section: ClassVar[str] = "texts"

    item_fields: list[str] = Field(
        default_factory=lambda: ["text"], min_length=1, description="item fields encoded, e.g. [text, title]"
    )
    tag_description_chars: int = Field(
        300, ge=0, description="tag vertex text: the readable tag plus this much of its description"
    )


class PipelineConfig(Section):
    """recall -> generate -> calibrate -> write back (paper defaults: 3 samples, 3 snippets, 0.5)."""

    section: ClassVar[str] = "pipeline"

    mode: Literal["auto", "single", "multi"] = Field(
        "auto",
        description="single: one tag per item; multi: up to max_tags; auto: multi when the stored "
        f"items carry more than {MULTI_TAG_MEAN} tags on average",
    )
    max_tags: int = Field(5, ge=1, description="multi-tag answers: at most this many tags")
    num_samples: int = Field(3, ge=0, description="retrieved annotated samples in the prompt (0: figure 3)")
    num_snippets: int = Field(3, ge=0, description="retrieved knowledge snippets in the prompt")
    calibrate: bool = Field(True, description="Yes/No calibration of every generated tag")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="confidence cut")
    route: Literal["off", "auto"] | float = Field(
        "auto",
        description="with a ranker in the store: off: every item to the LLM (ranked candidates); a "
        "number tau: items (multi-tag: tags) whose ranker probability reaches tau take the ranker's "
        "tags, the rest go to the LLM; auto: tau fitted on held-out LLM outcomes (none: nothing sent)",
    )
    target_precision: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="instead of threshold: cut the ranker's and the LLM's tags where each reaches this "
        "precision on held-out data with 95% confidence (e.g. 0.95)",
    )
    constrained: bool = Field(
        True, description="constrained decoding; false: free generation matched to the candidates"
    )
    write_back: bool = Field(False, description="final tags become graph edges")
    batch_size: int = Field(16, ge=1, description="items per pipeline call")
    # One call per 16 items spent a third of the ranker path's time on per-call costs: 238-250 items/s
    # against 328-336 in calls of 256 (BANKING77 test split, in process; docs/performance.md).
    ranker_batch_size: int = Field(
        256, ge=1, description="items per pipeline call when the route plan sends nothing to the LLM"
    )
    knowledge_files: list[str] = Field(
        default_factory=list, description="domain knowledge (JSONL or Markdown) added at build time"
    )

    @field_validator("route")
    @classmethod
    def _route(cls, value: Any) -> Any:
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ValueError(f"must be off, auto or a number within [0, 1], got {value}")
        return value


class BulkStage(Section):
    """One stage of the bulk job (`llm4tag tag --output DIR/`): a pool of Ray Data actors."""

    section: ClassVar[str] = "bulk.stage"

    batch_size: int = Field(16, ge=1, description="items per call (the LLM stages batch by llm.batch_size)")
    actors: int = Field(1, ge=1, description="pool size, or its lower bound when max_actors is set")
    max_actors: int | None = Field(None, ge=1, description="autoscale the pool up to this many actors")
    # At most 0.5 by default: two 1-CPU actors plus the read tasks deadlocked a 2-CPU cluster.
    num_cpus: float = Field(0.5, ge=0, description="CPUs per actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor")

    @model_validator(mode="after")
    def _pool(self) -> BulkStage:
        if self.max_actors is not None and self.max_actors < self.actors:
            raise ValueError(f"max_actors must be >= actors ({self.actors})")
        return self


def _default_recall_stage() -> BulkStage:
    # Encoding is cheap per item next to the LLM stages: big batches amortise the per-call overhead.
    return BulkStage(batch_size=256)


class BulkConfig(Section):
    """Bulk tagging on Ray Data: encode+recall -> generate -> calibrate, each stage an actor pool."""

    section: ClassVar[str] = "bulk"

    recall: BulkStage = Field(default_factory=_default_recall_stage, description="encode + recall actors")
    generate: BulkStage = Field(default_factory=BulkStage, description="generation actors")
    calibrate: BulkStage = Field(default_factory=BulkStage, description="calibration actors")
    # A crash loses at most the rows not yet in a closed file, and they are tagged on rerun.
    rows_per_file: int = Field(1000, ge=1, description="an output file is closed after this many rows...")
    flush_seconds: float = Field(60.0, gt=0, description="...or after this many seconds")
    # The default 1 leaves no room for the actors on a small cluster.
    read_num_cpus: float = Field(0.25, ge=0, description="CPUs per read task")

    @field_validator("recall", mode="before")
    @classmethod
    def _recall_defaults(cls, value: Any) -> Any:
        # Keys not given keep the recall stage's defaults (batches of 256), not a bare stage's.
        return {**_default_recall_stage().model_dump(), **value} if isinstance(value, dict) else value


class PeersConfig(Section):
    """The taggers we compare against (`llm4tag tag --method ...`): TagGPT's two, BETag, match."""

    section: ClassVar[str] = "peers"

    num_candidates: int = Field(20, ge=1, description="selective: tags matched early by cosine and shown")
    selective_constrained: bool = Field(
        False, description="selective: constrain the answer to the candidates (TagGPT reads it free)"
    )
    # TagGPT gives no value; 0.5 is the paper's c-t similarity threshold.
    match_threshold: float = Field(
        0.5, ge=-1.0, le=1.0, description="late matching: a phrase names a tag at this cosine or above"
    )
    # On CPU every generated token costs a pass over the model.
    max_new_tokens: int = Field(32, ge=1, description="generated tokens (about eight short tags)")
    num_beams: int = Field(6, ge=1, description="BETag: beams (a multiple of num_beam_groups)")
    num_beam_groups: int = Field(3, ge=1, description="BETag: groups with a Hamming diversity penalty")
    diversity_penalty: float = Field(1.0, ge=0, description="BETag: the penalty")
    length_penalty: float = Field(1.0, description="BETag: length normalisation exponent")
    example_text: str = Field("", description="a worked example in the generative prompt (none by default)")
    example_tags: list[str] = Field(default_factory=list, description="...and its tags")
    prompts: PeerPromptConfig = Field(default_factory=PeerPromptConfig, description="templates")

    @model_validator(mode="after")
    def _beams(self) -> PeersConfig:
        if self.num_beams % self.num_beam_groups:
            raise ValueError(
                f"num_beams ({self.num_beams}) must be a positive multiple of "
                f"num_beam_groups ({self.num_beam_groups})"
            )
        return self


class VocabConfig(Section):
    """`llm4tag vocab build`: candidate tags per item from the LLM (TagGPT section 2.1), then a
    frequency filter and near-duplicate merging. The prompt is peers.prompts.generative."""

    section: ClassVar[str] = "vocab"

    max_new_tokens: int = Field(32, ge=1, description="generated tokens per item")
    chunk: int = Field(16, ge=1, description="items per cached chunk of answers (resumable)")
    max_words: int = Field(5, ge=1, description="a longer phrase is a sentence, not a tag")
    max_chars: int = Field(60, ge=1, description="...or longer than this")
    min_count: int | None = Field(
        None, ge=1, description="too rare below this many items (null: max(2, ceil(0.002 * items)))"
    )
    max_share: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="too common above this share (null: upper Tukey fence of log counts)",
    )
    max_share_floor: float = Field(0.05, ge=0.0, le=1.0, description="...never below this share")
    merge_threshold: float = Field(0.8, ge=-1.0, le=1.0, description="near-duplicates merged at this cosine")
    redundancy_threshold: float = Field(0.8, ge=-1.0, le=1.0, description="TagGPT's redundancy measure")
    description_aliases: int = Field(5, ge=0, description="aliases listed in a merged tag's description")


class AugmentConfig(Section):
    """`llm4tag augment`: example items the LLM writes for tags with few real annotations.

    They are used to fit the learned recall, never held out, never gold, never a retrieved sample."""

    section: ClassVar[str] = "augment"

    k: int = Field(5, ge=1, description="examples written per tag")
    min_annotations: int = Field(
        5,
        ge=1,
        description="tags with fewer real annotations are augmented; a fit uses as many of a tag's "
        "examples as it lacks real annotations to reach this",
    )
    style_tags: int = Field(3, ge=0, description="nearest annotated tags (by tag vector) shown for style")
    style_items: int = Field(2, ge=0, description="real items shown per style tag")
    snippets: int = Field(3, ge=0, description="knowledge snippets about the tag shown")
    max_new_tokens: int = Field(256, ge=1, description="generated tokens per tag")
    max_example_chars: int = Field(300, ge=1, description="a longer line of the answer is cut to this")
    prompts: AugmentPromptConfig = Field(default_factory=AugmentPromptConfig, description="the template")


class Settings(Section):
    """Every section; each is optional in the YAML file."""

    section: ClassVar[str] = ""

    encoder: EncoderConfig = Field(default_factory=EncoderConfig, description="the sentence encoder")
    texts: TextConfig = Field(default_factory=TextConfig, description="which text represents an item, a tag")
    graph: GraphConfig = Field(default_factory=GraphConfig, description="the content-tag graph and recall")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="the LLM and its engine")
    prompts: PromptConfig = Field(default_factory=PromptConfig, description="the templates of figures 3-5")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="the tagging pipeline")
    bulk: BulkConfig = Field(default_factory=BulkConfig, description="bulk tagging on Ray Data")
    vocab: VocabConfig = Field(default_factory=VocabConfig, description="`llm4tag vocab build`")
    peers: PeersConfig = Field(default_factory=PeersConfig, description="the baseline taggers")
    ranking: RankingConfig = Field(default_factory=RankingConfig, description="learned recall and ranker")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="LoRA fine-tuning")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="`llm4tag augment`")

    @property
    def judgments_in_context(self) -> bool:
        """Whether a judgment continues the generation conversation (``prompts.layout``; ``auto``:
        where the engine keeps the computed prompt between calls, so the judgment reads only its
        question)."""
        if self.prompts.layout != "auto":
            return self.prompts.layout == "continuation"
        return self.llm.engine == "llamacpp" or (self.llm.engine == "vllm" and self.llm.enable_prefix_caching)

    @property
    def judges_with_generation(self) -> bool:
        """Calibration is on and its judgments continue the generation conversations: the stage that
        generated judges, in the same call (the Serve app binds no Calibrator deployment, the bulk job's
        generate actors judge), since another one would have to compute the conversation again."""
        return self.pipeline.calibrate and self.judgments_in_context

    @property
    def plan_args(self) -> dict[str, Any]:
        """What a store's route plan is resolved from (``ranking.store_routing.open_routing``'s
        keywords), read one way for every driver: the in-process pipeline, the Serve ingress, the bulk
        stages. ``threshold_set``: the user gave ``pipeline.threshold`` (else a store's fitted output
        rule cuts the ranker's tags)."""
        pipeline = self.pipeline
        return {
            "route": pipeline.route,
            "threshold": pipeline.threshold,
            "threshold_set": "threshold" in pipeline.model_fields_set,
            "target_precision": pipeline.target_precision,
            "num_candidates": self.graph.recall.num_candidates,
        }


def settings_from_dict(data: dict[str, Any] | None) -> Settings:
    return Settings.load(data)


def load_settings(path: str | Path | None) -> Settings:
    return Settings() if path is None else settings_from_dict(read_yaml(path, "config", ConfigError))
