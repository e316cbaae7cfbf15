"""The llama.cpp engine: a GGUF model as it ships (int4/int8 kernels on CPU), through llama-cpp-python.

On a CPU the cost of a prompt is its prefill, so this engine never computes the same tokens twice where
it can avoid it:

- The live context is reused from the longest prefix it shares with the next prompt: one item's
  judgments (content first, tag last) compute the content once; the static system lines of every prompt
  are computed once per run of prompts.
- A small LRU of saved KV states (``llm.state_cache_mb``), keyed by token prefix and adapter, lets a
  later prompt start from an earlier one: an item's judgments from its generation prompt when the two
  share their beginning (``prompts.layout: shared``), or the generation conversation itself
  (``layout: continuation``).
- Constrained choice decodes only where the choice automaton leaves the model a real choice; tokens it
  forces (the rest of a tag's spelling) are evaluated together, at prefill speed.

Answers are greedy. ``choose`` masks the logits with the same ``ChoiceAutomaton`` as the transformers
engine, so the guarantees are the same: every answer is a candidate, distinct, at most ``max_choices``.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm4tag.engines.adapters import LlamaLoras, uses_adapter
from llm4tag.engines.base import (
    CHOICE_SEPARATOR,
    NO_VARIANTS,
    YES_VARIANTS,
    ChoiceRequest,
    EngineStats,
    Messages,
    YesNo,
    single_token_ids,
)
from llm4tag.engines.choices import ChoiceAutomaton
from llm4tag.engines.config import LLMConfig
from llm4tag.errors import ModelError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "llama-cpp-python is not installed in this environment: `bash scripts/setup.sh` builds it "
    "(or `pip install llama-cpp-python`)"
)
# llama.cpp's compiled CPU features (llama_print_system_info) as /proc/cpuinfo names them.
CPU_FLAGS = {
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AVX_VNNI": "avx_vnni",
    "AMX_INT8": "amx_int8",
}
# A saved state is restored only when it spares at least this many tokens over the live context:
# restoring copies the KV cells, which costs about as much as computing a few tokens.
MIN_RESTORE_GAIN = 8


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


@dataclass
class _State:
    tokens: np.ndarray
    data: bytes


class PrefixStates:
    """Saved KV states of sequence 0, least recently used dropped first, within ``capacity`` bytes."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0
        self.entries: OrderedDict[tuple, _State] = OrderedDict()
        self.hits = 0

    def best(self, adapter: str, tokens: np.ndarray) -> tuple[_State | None, int]:
        best, length = None, 0
        for (owner, _), state in self.entries.items():
            if owner != adapter:
                continue
            shared = common_prefix(state.tokens, tokens)
            if shared > length:
                best, length = state, shared
        return best, length

    def add(self, adapter: str, tokens: np.ndarray, data: bytes) -> None:
        if len(data) > self.capacity:
            return
        key = (adapter, tokens.tobytes())
        old = self.entries.pop(key, None)
        if old is not None:
            self.size -= len(old.data)
        self.entries[key] = _State(tokens.copy(), data)
        self.size += len(data)
        while self.size > self.capacity:
            _, dropped = self.entries.popitem(last=False)
            self.size -= len(dropped.data)

    def touch(self, adapter: str, state: _State) -> None:
        key = (adapter, state.tokens.tobytes())
        if key in self.entries:
            self.entries.move_to_end(key)

    def clear(self) -> None:
        self.entries.clear()
        self.size = 0


class LlamaCppEngine:
    def __init__(self, model_path: str | Path, config: LLMConfig | None = None):
        self.config = config or LLMConfig(engine="llamacpp")
        path = Path(model_path)
        if (self.config.threads or 0) != 1:
            # llama.cpp's threads meet at an OpenMP barrier after every operation; spinning there
            # (libgomp's default) collapsed 2 threads to 0.2 decode tokens/s when another process
            # shared the 2 cores, where sleeping kept 12. Read when libgomp loads, so set first.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            from llama_cpp import Llama
            from llama_cpp import llama_cpp as lib
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise ModelError(INSTALL_HINT) from exc
        self._lib = lib
        check_cpu(lib.llama_print_system_info().decode("utf-8", errors="replace"))
        threads = self.config.threads or None
        try:
            self.llm = Llama(
                model_path=str(path),
                n_ctx=self.config.max_model_len,
                n_batch=self.config.n_batch,
                n_ubatch=self.config.n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                seed=self.config.seed,
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp cannot load '{model_path}': {exc}") from exc
        # A bundled model by its name (<home>/<name>/gguf/<file>.gguf), any other file by its own.
        self.name = f"llamacpp:{path.parent.parent.name if path.parent.name == 'gguf' else path.stem}"
        self.stats = EngineStats()
        self.n_vocab = self.llm.n_vocab()
        vocab = lib.llama_model_get_vocab(self.llm.model)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"'{model_path}' carries no chat template (tokenizer.chat_template)")
        self._formatter = Jinja2ChatFormatter(
            template, eos_token=self._piece(self.llm.token_eos()), bos_token=self._piece(self.llm.token_bos())
        )
        # Every end-of-generation token of the vocabulary (end of turn, end of text, ...); the first is
        # the one the choice automaton writes.
        eos = self.llm.token_eos()
        self.end_ids = [eos] if lib.llama_vocab_is_eog(vocab, eos) else []
        self.end_ids += [t for t in range(self.n_vocab) if t != eos and lib.llama_vocab_is_eog(vocab, t)]
        if not self.end_ids:
            raise ModelError(f"model '{model_path}' defines no end-of-generation token")
        self._end = set(self.end_ids)
        self.yes_ids = single_token_ids(self._encode_answer, YES_VARIANTS)
        self.no_ids = single_token_ids(self._encode_answer, NO_VARIANTS)
        if not self.yes_ids or not self.no_ids:
            raise ModelError("the tokenizer has no single-token 'Yes'/'No' answer")
        self.states = PrefixStates(int(self.config.state_cache_mb) << 20)
        self.adapters = LlamaLoras(self)
        self.lock = self.adapters.lock
        for role in ("generator", "calibrator"):
            if getattr(self.config, f"{role}_adapter"):
                self.adapters.load(role, getattr(self.config, f"{role}_adapter"))

    # -- tokens ----------------------------------------------------------------------------------
    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _encode_answer(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def render(self, messages: Messages) -> list[int]:
        """The chat-templated prompt as token ids (the GGUF's own template, as transformers renders it)."""
        text = self._formatter(messages=messages).prompt
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if len(ids) >= self.config.max_model_len:
            raise ModelError(
                f"prompt of {len(ids)} tokens exceeds llm.max_model_len={self.config.max_model_len}"
            )
        return ids

    # -- the context -----------------------------------------------------------------------------
    def _live(self) -> np.ndarray:
        return self.llm.input_ids[: self.llm.n_tokens]

    def _logits(self) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _eval(self, tokens: Sequence[int]) -> np.ndarray:
        self.llm.eval(list(tokens))
        self.stats.prompt_tokens += len(tokens)
        return self._logits()

    def _prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Make the context hold exactly ``tokens``, computing only what it does not hold yet; the logits
        at the last position."""
        wanted = np.asarray(tokens, dtype=np.intc)
        live = common_prefix(self._live(), wanted)
        adapter = self.adapters.active
        saved, shared = self.states.best(adapter, wanted)
        if saved is not None and shared >= live + MIN_RESTORE_GAIN:
            self._restore(saved)
            self.states.touch(adapter, saved)
            self.states.hits += 1
            live = shared
        # The last token is always computed: its logits are the answer.
        keep = min(live, len(wanted) - 1)
        self.llm.n_tokens = keep
        self.stats.cached_tokens += keep
        return self._eval(wanted[keep:])

    def _save(self) -> None:
        lib, ctx = self._lib, self.llm.ctx
        size = lib.llama_state_seq_get_size(ctx, 0)
        if size <= 0 or size > self.states.capacity:
            return
        buffer = (ctypes.c_uint8 * size)()
        written = lib.llama_state_seq_get_data(ctx, buffer, size, 0)
        self.states.add(self.adapters.active, self._live(), bytes(buffer)[:written])

    def _restore(self, state: _State) -> None:
        lib, ctx = self._lib, self.llm.ctx
        lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), 0, -1, -1)
        buffer = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        if lib.llama_state_seq_set_data(ctx, buffer, len(state.data), 0) != len(state.data):
            self.llm.n_tokens = 0
            raise ModelError("llama.cpp refused a saved prefix state")
        self.llm.input_ids[: len(state.tokens)] = state.tokens
        self.llm.n_tokens = len(state.tokens)

    def forget_states(self) -> None:
        """Drop the saved states and the live context (after an adapter swap they no longer match)."""
        self.states.clear()
        self.llm.n_tokens = 0

    # -- Engine ----------------------------------------------------------------------------------
    @uses_adapter("generator")
    def choose(self, requests: Sequence[ChoiceRequest]) -> list[list[str]]:
        answers = []
        for request in requests:
            automaton = ChoiceAutomaton(
                request.choices, self._encode_answer, self.end_ids, request.max_choices
            )
            longest = max(len(self._encode_answer(CHOICE_SEPARATOR + c)) for c in request.choices)
            logits = self._prefill(self.render(request.messages))
            generated: list[int] = []
            pending: list[int] = []
            for _ in range(longest * request.max_choices + 1):
                allowed = automaton.allowed(generated)
                if len(allowed) > 1:
                    # Tokens the automaton forced are computed together, only now that their logits
                    # decide something.
                    if pending:
                        logits = self._eval(pending)
                        pending = []
                    token = allowed[int(np.argmax(logits[allowed]))]
                else:
                    token = allowed[0]
                generated.append(token)
                if token in self._end:
                    break
                pending.append(token)
            # Saved with its answer, so that a judgment continuing this conversation starts from the
            # same computed state whether the context is still live or other items came in between:
            # an item's confidence does not depend on the batch it shared.
            self._save()
            self.stats.generated_tokens += len(generated)
            answers.append(automaton.parse(generated))
            self.stats.count("choose")
        return answers

    @uses_adapter("calibrator")
    def score_yes_no(self, prompts: Sequence[Messages]) -> list[YesNo]:
        out = []
        for messages in prompts:
            logits = self._prefill(self.render(messages)).astype(np.float64)
            top = float(logits.max())
            log_norm = top + float(np.log(np.exp(logits - top).sum()))
            out.append(
                YesNo(
                    yes=_logsumexp(logits[self.yes_ids]) - log_norm,
                    no=_logsumexp(logits[self.no_ids]) - log_norm,
                )
            )
            self.stats.count("score")
        return out

    @uses_adapter("generator")
    def generate(self, prompts: Sequence[Messages], max_tokens: int = 64) -> list[str]:
        texts = []
        for messages in prompts:
            logits = self._prefill(self.render(messages))
            generated: list[int] = []
            for _ in range(max_tokens):
                token = int(np.argmax(logits))
                if token in self._end:
                    break
                generated.append(token)
                if len(generated) < max_tokens:
                    logits = self._eval([token])
            self.stats.generated_tokens += len(generated)
            texts.append(self.llm.detokenize(generated).decode("utf-8", errors="replace").strip())
            self.stats.count("generate")
        return texts

    def generate_diverse(self, prompts: Sequence[Messages], *args, **kwargs) -> list[list[str]]:
        raise ModelError(
            "the llama.cpp engine has no diverse beam search (beam groups): run BETag with "
            "llm.engine: transformers"
        )

    def close(self) -> None:
        self.states.clear()
        self.adapters.close()
        self.llm.close()


def check_cpu(system_info: str, cpuinfo: str = "/proc/cpuinfo") -> None:
    """Refuse a llama.cpp build that uses instructions this CPU lacks (scripts/setup.sh builds for the
    CPU it runs on; a venv moved to an older CPU would otherwise die of an illegal instruction)."""
    try:
        flags = set()
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return
    if not flags:
        return
    # "CPU : SSE3 = 1 | AVX2 = 1 | ...": the features this build uses.
    built = {
        name.split(":")[-1].strip()
        for name, _, on in (part.partition("=") for part in system_info.split("|"))
        if on.strip() == "1"
    }
    missing = sorted(name for name in built if name in CPU_FLAGS and CPU_FLAGS[name] not in flags)
    if missing:
        raise ModelError(
            f"llama.cpp was built for a CPU with {', '.join(missing)}, which this CPU lacks: rebuild it here "
            "(pip uninstall -y llama-cpp-python && bash scripts/setup.sh), or LLAMA_PORTABLE=1 for a build "
            "that runs on any x86-64 with AVX2"
        )


def _logsumexp(values: np.ndarray) -> float:
    top = float(values.max())
    return top + float(np.log(np.exp(values - top).sum()))
