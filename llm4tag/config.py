"""Settings as data: one YAML file (or none, for the defaults) configures encoder, texts and graph."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from graph_store import GraphConfig, StoreError
from llm4tag.encoder import EncoderConfig
from llm4tag.engines.config import LLMConfig
from llm4tag.errors import ConfigError
from llm4tag.prompts import PromptConfig, prompt_config_from_dict

MODES = ("auto", "single", "multi")


@dataclass
class TextConfig:
    """Which text represents a vertex (the paper: title and category of a content, tag description)."""

    item_fields: list[str] = field(default_factory=lambda: ["text"])
    # Tag vertex text: the tag made readable ("card_arrival" -> "card arrival") plus its description.
    tag_description_chars: int = 300


@dataclass
class PipelineConfig:
    """recall -> generate -> calibrate -> write back (paper defaults: 3 samples, 3 snippets, 0.5)."""

    # single: one tag per item; multi: up to max_tags; auto: multi when the store's annotated items
    # carry more than 1.2 tags on average.
    mode: str = "auto"
    max_tags: int = 5
    num_samples: int = 3
    num_snippets: int = 3
    calibrate: bool = True
    threshold: float = 0.5
    # Constrained decoding; False = free generation, then the answer is matched to the candidates.
    constrained: bool = True
    write_back: bool = False
    batch_size: int = 16
    # Extra domain knowledge (JSONL or Markdown) added to the knowledge base at build time.
    knowledge_files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"pipeline.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"pipeline.threshold must be within [0, 1], got {self.threshold}")
        for name in ("max_tags", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pipeline.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_samples", "num_snippets"):
            if getattr(self, name) < 0:
                raise ConfigError(f"pipeline.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class BulkStage:
    """One stage of the bulk job (`llm4tag tag --output DIR/`): a pool of Ray Data actors."""

    # Items per call of the stage (the LLM stages then batch by llm.batch_size within it).
    batch_size: int = 16
    # Fixed pool size, or the lower bound when max_actors is set (the pool then autoscales).
    actors: int = 1
    max_actors: int | None = None
    # At most 0.5 by default: two 1-CPU actors plus the read tasks deadlocked a 2-CPU cluster.
    num_cpus: float = 0.5
    num_gpus: float = 0.0

    def check(self, where: str) -> None:
        if self.batch_size < 1 or self.actors < 1:
            raise ConfigError(f"bulk.{where}: batch_size and actors must be >= 1")
        if self.max_actors is not None and self.max_actors < self.actors:
            raise ConfigError(f"bulk.{where}.max_actors must be >= actors ({self.actors})")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError(f"bulk.{where}: num_cpus and num_gpus must be >= 0")


def _default_recall_stage() -> BulkStage:
    # Encoding is cheap per item next to the LLM stages: big batches amortise the per-call overhead.
    return BulkStage(batch_size=256)


@dataclass
class BulkConfig:
    """Bulk tagging on Ray Data: encode+recall -> generate -> calibrate, each stage an actor pool."""

    recall: BulkStage = field(default_factory=_default_recall_stage)
    generate: BulkStage = field(default_factory=BulkStage)
    calibrate: BulkStage = field(default_factory=BulkStage)
    # An output file is closed (renamed into place) after this many rows or seconds, whichever comes
    # first: a crash loses at most the rows not yet in a closed file, and they are tagged on rerun.
    rows_per_file: int = 1000
    flush_seconds: float = 60.0
    # CPUs per read task; the default 1 leaves no room for the actors on a small cluster.
    read_num_cpus: float = 0.25

    def __post_init__(self) -> None:
        for name in ("recall", "generate", "calibrate"):
            value = getattr(self, name)
            if isinstance(value, dict):
                value = _section(BulkStage, value, f"bulk.{name}")
                setattr(self, name, value)
            if not isinstance(value, BulkStage):
                raise ConfigError(f"config section 'bulk.{name}' must be a mapping")
            value.check(name)
        if self.rows_per_file < 1 or self.flush_seconds <= 0 or self.read_num_cpus < 0:
            raise ConfigError("bulk: rows_per_file must be >= 1, flush_seconds > 0, read_num_cpus >= 0")


_PEER_PLACEHOLDERS = {
    "system": set(),
    "generative": {"content", "example"},
    "example": {"text", "tags"},
    "selective": {"content", "candidates", "instruction"},
    "selective_single": set(),
    "selective_multi": {"max_tags"},
}


@dataclass
class Settings:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    texts: TextConfig = field(default_factory=TextConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    bulk: BulkConfig = field(default_factory=BulkConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _section(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where}' must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config section '{where}' has unknown setting(s): {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"config section '{where}': {exc}") from exc


def settings_from_dict(data: dict[str, Any] | None) -> Settings:
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(
            "config must be a mapping of sections "
            "(encoder, texts, graph, llm, prompts, pipeline, bulk)"
        )
    sections = ("encoder", "texts", "graph", "llm", "prompts", "pipeline", "bulk")
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(
            f"config has unknown section(s): {', '.join(unknown)} (known: {', '.join(sections)})"
        )
    try:
        graph = GraphConfig.from_dict(data.get("graph"))
    except (StoreError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc
    return Settings(
        encoder=_section(EncoderConfig, data.get("encoder"), "encoder"),
        texts=_section(TextConfig, data.get("texts"), "texts"),
        graph=graph,
        llm=_section(LLMConfig, data.get("llm"), "llm"),
        prompts=_prompts(data.get("prompts")),
        pipeline=_section(PipelineConfig, data.get("pipeline"), "pipeline"),
        bulk=_section(BulkConfig, data.get("bulk"), "bulk"),
    )


def _prompts(data: Any) -> PromptConfig:
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config section 'prompts' must be a mapping, got {type(data).__name__}")
    return prompt_config_from_dict(data)


def load_settings(path: str | Path | None) -> Settings:
    if path is None:
        return Settings()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    return settings_from_dict(data)
