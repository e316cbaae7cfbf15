"""Settings as data: one YAML file (or none, for the defaults) configures encoder, texts and graph."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from graph_store import GraphConfig, StoreError
from llm4tag.config.finetune import FinetuneConfig, finetune_config_from_dict
from llm4tag.encoder import EncoderConfig
from llm4tag.engines.config import LLMConfig
from llm4tag.errors import ConfigError
from llm4tag.prompts import PromptConfig, prompt_config_from_dict

MODES = ("auto", "single", "multi")
# pipeline.mode auto: multi-tag when the annotated items carry more tags than this on average.
MULTI_TAG_MEAN = 1.2


def resolve_mode(mode: str, tags_per_item: Sequence[float]) -> str:
    """``single`` or ``multi`` for a configured mode; ``auto`` decides from the annotations' mean."""
    if mode != "auto":
        return mode
    mean = sum(tags_per_item) / len(tags_per_item) if len(tags_per_item) else 0.0
    return "multi" if mean > MULTI_TAG_MEAN else "single"


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
class PeerPromptConfig:
    """Templates of the peer taggers and of vocabulary construction (defaults: prompts/peers.yaml)."""

    system: str = ""
    generative: str = ""
    example: str = ""
    selective: str = ""
    selective_single: str = ""
    selective_multi: str = ""

    def __post_init__(self) -> None:
        import string
        from importlib import resources

        defaults = yaml.safe_load(resources.files("llm4tag.prompts").joinpath("peers.yaml").read_text())
        common = {"domain", "item_kind", "item_kinds", "item_kind_title"}
        for name, allowed in _PEER_PLACEHOLDERS.items():
            if not getattr(self, name):
                setattr(self, name, defaults[name])
            try:
                used = {p for _, p, _, _ in string.Formatter().parse(getattr(self, name)) if p is not None}
            except ValueError as exc:
                raise ConfigError(f"peers.prompts.{name} is not a valid template: {exc}") from exc
            unknown = sorted(used - allowed - common)
            if unknown:
                raise ConfigError(
                    f"peers.prompts.{name} uses unknown placeholder(s) "
                    f"{', '.join('{' + u + '}' for u in unknown)}"
                )


@dataclass
class PeersConfig:
    """The taggers we compare against (`llm4tag tag --method ...`): TagGPT's two, BETag, match."""

    # Selective tagger: tags matched early by cosine and shown to the LLM.
    num_candidates: int = 20
    # TagGPT's selective tagger reads the LLM's free answer; true = constrained to the candidates.
    selective_constrained: bool = False
    # Late matching (generative tagger, BETag): a generated phrase names a vocabulary tag when their
    # cosine reaches this. TagGPT gives no value; 0.5 is the paper's c-t similarity threshold.
    match_threshold: float = 0.5
    # Enough for about eight short tags; on CPU every generated token costs a pass over the model.
    max_new_tokens: int = 32
    # BETag's diverse multi-beam generation: groups of beams with a Hamming diversity penalty.
    num_beams: int = 6
    num_beam_groups: int = 3
    diversity_penalty: float = 1.0
    length_penalty: float = 1.0
    # One worked example in the generative prompt, as in TagGPT's template (none by default).
    example_text: str = ""
    example_tags: list[str] = field(default_factory=list)
    prompts: PeerPromptConfig = field(default_factory=PeerPromptConfig)

    def __post_init__(self) -> None:
        if isinstance(self.prompts, dict):
            self.prompts = _section(PeerPromptConfig, self.prompts, "peers.prompts")
        if not isinstance(self.prompts, PeerPromptConfig):
            raise ConfigError("config section 'peers.prompts' must be a mapping")
        if self.num_candidates < 1 or self.max_new_tokens < 1:
            raise ConfigError("peers: num_candidates and max_new_tokens must be >= 1")
        if not -1.0 <= self.match_threshold <= 1.0:
            raise ConfigError(f"peers.match_threshold must be in [-1, 1], got {self.match_threshold}")
        if self.num_beam_groups < 1 or self.num_beams % self.num_beam_groups:
            raise ConfigError(
                f"peers.num_beams ({self.num_beams}) must be a positive multiple of "
                f"peers.num_beam_groups ({self.num_beam_groups})"
            )
        if self.diversity_penalty < 0:
            raise ConfigError("peers.diversity_penalty must be >= 0")


@dataclass
class VocabConfig:
    """`llm4tag vocab build`: candidate tags per item from the LLM (TagGPT section 2.1), then a
    frequency filter and near-duplicate merging. The prompt is peers.prompts.generative."""

    max_new_tokens: int = 32
    # Items per resumable chunk: their answers reach the cache together.
    chunk: int = 16
    # A generated phrase longer than this is a sentence, not a tag.
    max_words: int = 5
    max_chars: int = 60
    # Too rare: on fewer items than this. None: max(2, ceil(0.002 * items)), i.e. never a tag of one item.
    min_count: int | None = None
    # Too common: on more than this share of the items. None: from the popularity distribution (the
    # upper Tukey fence of log counts), never below max_share_floor.
    max_share: float | None = None
    max_share_floor: float = 0.05
    # Tags at or above this cosine are merged (TagGPT's redundancy threshold).
    merge_threshold: float = 0.8
    redundancy_threshold: float = 0.8
    # Aliases listed in a merged tag's description (so the encoder and the judge read them too).
    description_aliases: int = 5

    def __post_init__(self) -> None:
        if self.min_count is not None and self.min_count < 1:
            raise ConfigError(f"vocab.min_count must be >= 1, got {self.min_count}")
        if self.max_share is not None and not 0.0 < self.max_share <= 1.0:
            raise ConfigError(f"vocab.max_share must be within (0, 1], got {self.max_share}")
        for name in ("merge_threshold", "redundancy_threshold"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"vocab.{name} must be a cosine in [-1, 1], got {getattr(self, name)}")
        if min(self.max_new_tokens, self.chunk, self.max_words, self.max_chars) < 1:
            raise ConfigError("vocab: max_new_tokens, chunk, max_words and max_chars must be >= 1")


@dataclass
class Settings:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    texts: TextConfig = field(default_factory=TextConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    bulk: BulkConfig = field(default_factory=BulkConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

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
            "(encoder, texts, graph, llm, prompts, pipeline, bulk, vocab, peers)"
        )
    sections = (
        "encoder",
        "texts",
        "graph",
        "llm",
        "prompts",
        "pipeline",
        "bulk",
        "vocab",
        "peers",
        "finetune",
    )
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
        vocab=_section(VocabConfig, data.get("vocab"), "vocab"),
        peers=_section(PeersConfig, data.get("peers"), "peers"),
        finetune=finetune_config_from_dict(data.get("finetune")),
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
