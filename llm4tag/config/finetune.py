"""The `finetune:` config section: training data, LoRA, and the trainer's CPU and GPU settings.

Plain dataclasses like the other sections (no torch import here): `llm4tag.config` loads them from the
same YAML file and an unknown key anywhere in the section is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from llm4tag.errors import ConfigError

SELECTIONS = ("diverse", "balanced", "random", "all")
MISSING_GOLD = ("inject", "drop")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainDataConfig:
    """`llm4tag train-data`: which annotated items become examples, and how."""

    # Examples are built for at most this many items (None: all annotated training items).
    max_items: int | None = 2000
    # diverse: per-tag coverage first, then greedy farthest-point (k-center) over item embeddings,
    # the paper's diversity principle; balanced: round-robin over tags; random; all.
    selection: str = "diverse"
    # A gold tag that recall did not find: "inject" puts it into the candidate list at a random
    # position (replacing the weakest non-gold candidate, so the list keeps its inference length);
    # "drop" leaves the generator example out. See README "Fine-tuning" for why inject is the default.
    missing_gold: str = "inject"
    # Cross-fitting: the items are split into this many folds and each fold's prompts come from a store
    # and knowledge bases built from the other folds, so an item never recalls or retrieves itself.
    folds: int = 4
    # Calibrator examples: "No" pairs per "Yes" pair, hardest (highest-ranked) non-gold candidates first.
    negatives_per_positive: float = 1.0
    # Human-reviewed labels (the store's feedback samples) are mixed in; they override an annotation
    # of the same item id and their "incorrect" tags become calibrator "No" examples.
    use_feedback: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ConfigError(f"finetune.data.selection must be one of {', '.join(SELECTIONS)}")
        if self.missing_gold not in MISSING_GOLD:
            raise ConfigError(f"finetune.data.missing_gold must be one of {', '.join(MISSING_GOLD)}")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"finetune.data.max_items must be >= 1, got {self.max_items}")
        if self.folds < 2:
            raise ConfigError(f"finetune.data.folds must be >= 2, got {self.folds}")
        if self.negatives_per_positive < 0:
            raise ConfigError("finetune.data.negatives_per_positive must be >= 0")


@dataclass
class LoraConfig:
    """PEFT LoRA on the attention projections (measured: r=8 q/k/v/o on a 0.5B model, ~5 s per step of
    4x168 tokens on the 2-core CPU, 6.7 GB peak)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ConfigError("finetune.lora: r and alpha must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"finetune.lora.dropout must be within [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("finetune.lora.target_modules must name at least one module")


@dataclass
class TrainerConfig:
    """One machine's training settings (`finetune.cpu` or `finetune.gpu`)."""

    # Optimiser steps; None: epochs over the data.
    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 2e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    # Longer examples are left out (counted in the manifest), never truncated into a wrong answer.
    max_length: int = 1024
    dtype: str = "float32"
    threads: int | None = 2
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    # Mean loss over this many examples before and after training (the manifest's loss_before/after).
    eval_examples: int = 32
    gradient_checkpointing: bool = False

    def check(self, where: str) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"finetune.{where}.max_steps must be >= 1")
        if self.epochs <= 0:
            raise ConfigError(f"finetune.{where}.epochs must be > 0")
        for name in ("batch_size", "grad_accum", "max_length", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"finetune.{where}.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"finetune.{where}.learning_rate must be > 0")
        if self.eval_examples < 0 or self.warmup_steps < 0:
            raise ConfigError(f"finetune.{where}: eval_examples and warmup_steps must be >= 0")


def _cpu_default() -> TrainerConfig:
    # Finishes small runs on the 2-core CPU: short sequences, small batches, few steps.
    return TrainerConfig(max_steps=200, batch_size=2, grad_accum=2, max_length=768, learning_rate=2e-4)


def _gpu_default() -> TrainerConfig:
    return TrainerConfig(
        epochs=2.0,
        batch_size=16,
        grad_accum=1,
        max_length=2048,
        learning_rate=2e-4,
        dtype="bfloat16",
        threads=None,
        checkpoint_every=200,
        warmup_steps=20,
    )


@dataclass
class RetrainConfig:
    """`llm4tag retrain`: held-out evaluation and promotion."""

    # Share of the annotated items held out for the promotion check (never trained on).
    holdout_fraction: float = 0.1
    holdout_max: int = 200
    # Promote when the new adapter's primary metric is at least the old one's minus this.
    tolerance: float = 0.0
    # Which adapters retrain trains.
    roles: list[str] = field(default_factory=lambda: ["generator", "calibrator"])

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError("finetune.retrain.holdout_fraction must be within (0, 1)")
        bad = sorted(set(self.roles) - {"generator", "calibrator"})
        if bad or not self.roles:
            raise ConfigError("finetune.retrain.roles must be a non-empty list of generator, calibrator")


@dataclass
class FinetuneConfig:
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # auto: gpu settings when CUDA is available, else cpu.
    device: str = "auto"
    cpu: TrainerConfig = field(default_factory=_cpu_default)
    gpu: TrainerConfig = field(default_factory=_gpu_default)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"finetune.device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name, cls in (("data", TrainDataConfig), ("lora", LoraConfig), ("retrain", RetrainConfig)):
            setattr(self, name, _sub(cls, getattr(self, name), f"finetune.{name}"))
        for name in ("cpu", "gpu"):
            value = getattr(self, name)
            if isinstance(value, dict):
                # Keys not given keep that machine's defaults, not the bare TrainerConfig ones.
                base = _cpu_default() if name == "cpu" else _gpu_default()
                value = _sub(
                    TrainerConfig,
                    {**{f.name: getattr(base, f.name) for f in fields(base)}, **value},
                    f"finetune.{name}",
                )
            if not isinstance(value, TrainerConfig):
                raise ConfigError(f"config section 'finetune.{name}' must be a mapping")
            value.check(name)
            setattr(self, name, value)


def _sub(cls, data: Any, where: str):
    if isinstance(data, cls):
        return data
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where}' must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"config section '{where}' has unknown setting(s): {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"config section '{where}': {exc}") from exc


def finetune_config_from_dict(data: Any) -> FinetuneConfig:
    return _sub(FinetuneConfig, data, "finetune")
