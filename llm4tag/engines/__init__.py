"""LLM engines behind one interface (see base.Engine): llama.cpp, transformers and vLLM."""

from __future__ import annotations

from llm4tag.engines.base import ChoiceRequest, Engine, EngineStats, Messages, YesNo, yes_no_confidence
from llm4tag.engines.config import LLMConfig

__all__ = [
    "ChoiceRequest",
    "Engine",
    "EngineStats",
    "LLMConfig",
    "Messages",
    "YesNo",
    "make_engine",
    "yes_no_confidence",
]


def make_engine(config: LLMConfig) -> Engine:
    from llm4tag.llm_weights import resolve_llm

    if config.engine == "llamacpp":
        from llm4tag.engines.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(resolve_llm(config.model, fmt="gguf"), config)
    path = resolve_llm(config.model)
    if config.engine == "vllm":
        from llm4tag.engines.vllm_engine import VLLMEngine

        return VLLMEngine(path, config)
    from llm4tag.engines.hf_engine import TransformersEngine

    return TransformersEngine(path, config)
