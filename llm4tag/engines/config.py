"""Which LLM runs, on which engine, with which resources: data, loaded from the `llm` config section."""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("llamacpp", "transformers", "vllm")


@dataclass
class LLMConfig:
    # A bundled model name (`llm4tag models list`), an alias ("default", "tiny") or a local HF folder.
    model: str = "default"
    # llamacpp: the bundled GGUF as shipped, on CPU (the default; benchmarks/engines.py); transformers:
    # any HF folder, CPU or one GPU, and the engine that trains adapters; vllm: GPU serving.
    engine: str = "llamacpp"
    # transformers on CPU: float32. bf16 matmuls ran at 0.8 GFLOP/s on the AVX2-only machines
    # (fp32: 128 GFLOP/s); on GPUs and CPUs with AMX, bfloat16 is the better choice.
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = 2
    # Prompts per forward pass (transformers) / sequences in flight (vLLM's max_num_seqs).
    batch_size: int = 8
    max_model_len: int = 4096
    # llama.cpp only: tokens per decode call, and the saved prefix states (KV of earlier prompts that
    # later prompts start from; ~28 KB per token for the 1.5B default).
    n_batch: int = 512
    state_cache_mb: int = 512
    # vLLM only.
    gpu_memory_utilization: float = 0.85
    enforce_eager: bool = True
    cpu_kvcache_gb: int = 4
    enable_prefix_caching: bool = True
    seed: int = 0
    # LoRA adapters (`llm4tag train`): the generator's serves choose/generate, the calibrator's the Yes/No
    # scores; None runs the base model for that role. vLLM needs enable_lora at start-up to take any
    # adapter, also one swapped in later, and adapters of rank <= max_lora_rank.
    generator_adapter: str | None = None
    calibrator_adapter: str | None = None
    enable_lora: bool = False
    max_lora_rank: int = 16
    # Serving: an active.json (llm4tag/finetune/registry.py) whose adapters replicas follow between
    # batches; `llm4tag retrain` promotions and POST /v1/admin/adapter rewrite it.
    adapters_file: str | None = None

    def __post_init__(self) -> None:
        from llm4tag.errors import ConfigError

        if self.engine not in ENGINES:
            raise ConfigError(f"llm.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.batch_size < 1:
            raise ConfigError(f"llm.batch_size must be >= 1, got {self.batch_size}")
        if self.n_batch < 1 or self.state_cache_mb < 0:
            raise ConfigError("llm.n_batch must be >= 1 and llm.state_cache_mb >= 0")
