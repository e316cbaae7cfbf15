"""Settings as data: one YAML file (or none, for the defaults) configures encoder, texts and graph."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from graph_store import GraphConfig, StoreError
from llm4tag.encoder import EncoderConfig
from llm4tag.errors import ConfigError


@dataclass
class TextConfig:
    """Which text represents a vertex (the paper: title and category of a content, tag description)."""

    item_fields: list[str] = field(default_factory=lambda: ["text"])
    # Tag vertex text: the tag made readable ("card_arrival" -> "card arrival") plus its description.
    tag_description_chars: int = 300


@dataclass
class Settings:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    texts: TextConfig = field(default_factory=TextConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)

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
        raise ConfigError("config must be a mapping with sections encoder, texts, graph")
    unknown = sorted(set(data) - {"encoder", "texts", "graph"})
    if unknown:
        raise ConfigError(
            f"config has unknown section(s): {', '.join(unknown)} (known: encoder, texts, graph)"
        )
    try:
        graph = GraphConfig.from_dict(data.get("graph"))
    except (StoreError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc
    return Settings(
        encoder=_section(EncoderConfig, data.get("encoder"), "encoder"),
        texts=_section(TextConfig, data.get("texts"), "texts"),
        graph=graph,
    )


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
