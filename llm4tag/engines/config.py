"""Which LLM runs, on which engine, with which resources: the `llm` config section."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from llm4tag.config_section import Section

ENGINES = ("llamacpp", "transformers", "vllm")


class LLMConfig(Section):
    """The LLM and its engine (the `llm:` section)."""

    section: ClassVar[str] = "llm"

    model: str = Field(
        "default",
        description="a bundled name (`llm4tag models list`), an alias (default, tiny) or a local HF folder",
    )
    # llamacpp: the bundled GGUF as shipped, on CPU (the default; benchmarks/engines.py); transformers:
    # any HF folder, CPU or one GPU, and the engine that trains adapters; vllm: GPU serving.
    engine: Literal["llamacpp", "transformers", "vllm"] = Field(
        "llamacpp", description="llamacpp (CPU, the GGUF as shipped) | transformers | vllm (GPU)"
    )
    # transformers on CPU: float32. bf16 matmuls ran at 0.8 GFLOP/s on the AVX2-only machines
    # (fp32: 128 GFLOP/s); on GPUs and CPUs with AMX, bfloat16 is the better choice.
    dtype: str = Field("float32", description="transformers/vLLM weights' dtype (float32 on AVX2 CPUs)")
    device: str = Field("cpu", description="transformers: torch device")
    # 1: on our 2-core machines one thread per LLM process beat two whenever anything else ran
    # (llama.cpp, default model, interleaved runs: prompt 51 vs 22 tokens/s, decode 16 vs 1.1;
    # transformers likewise). Serve runs more replicas instead.
    threads: int | None = Field(1, ge=1, description="CPU threads per LLM process (null: all cores)")
    batch_size: int = Field(
        8, ge=1, description="prompts per forward pass (transformers) / sequences in flight (vLLM)"
    )
    max_model_len: int = Field(4096, ge=1, description="longest prompt + answer, in tokens")
    # ~28 KB per token for the 1.5B default.
    n_batch: int = Field(512, ge=1, description="llama.cpp: tokens per decode call")
    state_cache_mb: int = Field(
        512, ge=0, description="llama.cpp: saved prefix states (KV of earlier prompts later ones start from)"
    )
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM: share of GPU memory")
    enforce_eager: bool = Field(True, description="vLLM: no CUDA graphs (faster start)")
    cpu_kvcache_gb: int = Field(4, ge=1, description="vLLM on CPU: KV cache size")
    enable_prefix_caching: bool = Field(True, description="vLLM: reuse computed prompt prefixes")
    seed: int = Field(0, description="sampling seed")
    # A role without an adapter runs the base model. vLLM needs enable_lora at start-up to take any
    # adapter, also one swapped in later, and adapters of rank <= max_lora_rank.
    generator_adapter: str | None = Field(
        None, description="LoRA adapter (`llm4tag train generator`) for choosing tags"
    )
    calibrator_adapter: str | None = Field(
        None, description="LoRA adapter (`llm4tag train calibrator`) for the Yes/No judgments"
    )
    enable_lora: bool = Field(False, description="vLLM: accept LoRA adapters")
    max_lora_rank: int = Field(16, ge=1, description="vLLM: largest adapter rank")
    # llm4tag/finetune/registry.py; `llm4tag retrain` promotions and POST /v1/admin/adapter rewrite it.
    adapters_file: str | None = Field(
        None, description="serving: an active.json whose adapters the replicas follow between batches"
    )
