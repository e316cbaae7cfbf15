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
class Settings:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    texts: TextConfig = field(default_factory=TextConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

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
            "config must be a mapping of sections (encoder, texts, graph, llm, prompts, pipeline)"
        )
    sections = ("encoder", "texts", "graph", "llm", "prompts", "pipeline")
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
