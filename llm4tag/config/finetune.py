"""The `finetune:` config section: training data, LoRA, and the trainer's CPU and GPU settings.

Sections like the others (no torch import here): `llm4tag.config` loads them from the same YAML file
and an unknown key anywhere in the section is an error.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from llm4tag.config_section import Section

SELECTIONS = ("diverse", "balanced", "random", "all")
MISSING_GOLD = ("inject", "drop")
DEVICES = ("auto", "cpu", "cuda")


class TrainDataConfig(Section):
    """`llm4tag train-data`: which annotated items become examples, and how."""

    section: ClassVar[str] = "finetune.data"

    max_items: int | None = Field(2000, ge=1, description="examples for at most this many items (null: all)")
    # diverse: per-tag coverage first, then greedy farthest-point (k-center) over item embeddings,
    # the paper's diversity principle.
    selection: Literal["diverse", "balanced", "random", "all"] = Field(
        "diverse",
        description="diverse (every tag, then k-center) | balanced (round-robin over tags) | random | all",
    )
    # inject: into the candidate list at a random position, replacing the weakest non-gold candidate
    # (the list keeps its inference length). See docs/usage.md "Fine-tuning" for why inject is the default.
    missing_gold: Literal["inject", "drop"] = Field(
        "inject", description="a gold tag recall missed: inject it among the candidates, or drop the example"
    )
    # Each fold's prompts come from a store and knowledge bases built from the other folds, so an item
    # never recalls or retrieves itself.
    folds: int = Field(4, ge=2, description="cross-fitting folds")
    negatives_per_positive: float = Field(
        1.0, ge=0, description='calibrator "No" pairs per "Yes" pair (hardest candidates first)'
    )
    # They override an annotation of the same item id; their "incorrect" tags become "No" examples.
    use_feedback: bool = Field(True, description="mix in the store's human-reviewed feedback")
    seed: int = Field(0, description="selection and injection seed")


class LoraConfig(Section):
    """PEFT LoRA on the attention projections (measured: r=8 q/k/v/o on a 0.5B model, ~5 s per step of
    4x168 tokens on the 2-core CPU, 6.7 GB peak)."""

    section: ClassVar[str] = "finetune.lora"

    r: int = Field(8, ge=1, description="rank")
    alpha: int = Field(16, ge=1, description="scaling")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="the projections adapted",
    )


class TrainerConfig(Section):
    """One machine's training settings (`finetune.cpu` or `finetune.gpu`)."""

    section: ClassVar[str] = "finetune.trainer"

    max_steps: int | None = Field(None, ge=1, description="optimiser steps (null: epochs over the data)")
    epochs: float = Field(1.0, gt=0, description="passes over the data")
    batch_size: int = Field(4, ge=1, description="examples per step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation")
    learning_rate: float = Field(2e-4, gt=0, description="learning rate")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up")
    weight_decay: float = Field(0.0, description="weight decay")
    # Never truncated into a wrong answer.
    max_length: int = Field(1024, ge=1, description="longer examples are left out (counted in the manifest)")
    dtype: str = Field("float32", description="training dtype")
    threads: int | None = Field(2, ge=1, description="CPU threads")
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept")
    eval_examples: int = Field(32, ge=0, description="examples whose mean loss is reported before and after")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")


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


class RetrainConfig(Section):
    """`llm4tag retrain`: held-out evaluation and promotion."""

    section: ClassVar[str] = "finetune.retrain"

    holdout_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="share of the annotated items held out (never trained on)"
    )
    holdout_max: int = Field(200, ge=1, description="held-out items evaluated at most")
    tolerance: float = Field(0.0, description="promote when the new primary metric >= the old one - this")
    roles: list[Literal["generator", "calibrator"]] = Field(
        default_factory=lambda: ["generator", "calibrator"], min_length=1, description="adapters trained"
    )


class FinetuneConfig(Section):
    """LoRA fine-tuning (the `finetune:` section)."""

    section: ClassVar[str] = "finetune"

    data: TrainDataConfig = Field(default_factory=TrainDataConfig, description="training data")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: the gpu settings when CUDA is available, else cpu"
    )
    cpu: TrainerConfig = Field(default_factory=_cpu_default, description="trainer settings on a CPU")
    gpu: TrainerConfig = Field(default_factory=_gpu_default, description="trainer settings on a GPU")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig, description="`llm4tag retrain`")
    seed: int = Field(0, description="training seed")

    @field_validator("cpu", "gpu", mode="before")
    @classmethod
    def _machine_defaults(cls, value: Any, info) -> Any:
        # Keys not given keep that machine's defaults, not the bare TrainerConfig ones.
        if not isinstance(value, dict):
            return value
        base = _cpu_default() if info.field_name == "cpu" else _gpu_default()
        return {**base.model_dump(), **value}
