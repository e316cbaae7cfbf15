"""The transformers engine: batched constrained choice and Yes/No scoring on CPU (or one GPU)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from llm4tag.engines.adapters import PeftAdapters, uses_adapter
from llm4tag.engines.base import (
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
from llm4tag.engines.beams import DiverseBeamSearch
from llm4tag.engines.choices import ChoiceAutomaton
from llm4tag.engines.config import LLMConfig
from llm4tag.errors import ModelError

log = logging.getLogger(__name__)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class TransformersEngine:
    def __init__(self, model_path: str | Path, config: LLMConfig | None = None):
        self.config = config or LLMConfig()
        path = Path(model_path)
        if not (path / "config.json").exists():
            raise ModelError(f"model folder '{model_path}' holds no HF model (no config.json)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self._torch = torch
        try:
            dtype = getattr(torch, self.config.dtype)
        except AttributeError as exc:
            raise ModelError(f"unknown dtype '{self.config.dtype}'") from exc
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.config.device)
        self.model.eval()
        self.name = f"transformers:{path.name if path.name != 'hf' else path.parent.name}"
        self.stats = EngineStats()
        generation = (
            GenerationConfig.from_pretrained(path) if (path / "generation_config.json").exists() else None
        )
        eos = generation.eos_token_id if generation is not None else None
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos_ids:
            eos_ids.insert(0, self.tokenizer.eos_token_id)
        if not eos_ids:
            raise ModelError(f"model '{model_path}' defines no end-of-sequence token")
        self.end_ids = eos_ids
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos_ids[0]
        self.yes_ids = single_token_ids(self._encode_answer, YES_VARIANTS)
        self.no_ids = single_token_ids(self._encode_answer, NO_VARIANTS)
        if not self.yes_ids or not self.no_ids:
            raise ModelError("the tokenizer has no single-token 'Yes'/'No' answer")
        self.adapters = PeftAdapters(self.model)
        for role in ("generator", "calibrator"):
            if getattr(self.config, f"{role}_adapter"):
                self.adapters.load(role, getattr(self.config, f"{role}_adapter"))

    # -- helpers -------------------------------------------------------------------------------
    def render(self, messages: Messages) -> list[int]:
        return render_chat(self.tokenizer, messages, self.config.max_model_len)

    def _encode_answer(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _left_padded(self, rows: Sequence[Sequence[int]]):
        torch = self._torch
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return ids.to(self.config.device), mask.to(self.config.device), width

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        # Similar lengths together waste less compute on padding.
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        size = self.config.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    # -- Engine --------------------------------------------------------------------------------
    @uses_adapter("generator")
    def choose(self, requests: Sequence[ChoiceRequest]) -> list[list[str]]:
        prompts = [self.render(r.messages) for r in requests]
        automata = [
            ChoiceAutomaton(r.choices, self._encode_answer, self.end_ids, r.max_choices) for r in requests
        ]
        answers: list[list[str]] = [[] for _ in requests]
        for batch in self._batches([len(p) for p in prompts]):
            rows = [prompts[i] for i in batch]
            ids, mask, width = self._left_padded(rows)
            longest = max(
                max(len(self._encode_answer(", " + c)) for c in requests[i].choices) * requests[i].max_choices
                for i in batch
            )

            def allowed(row: int, sequence, batch=batch, width=width):
                return automata[batch[row]].allowed(sequence[width:].tolist())

            with self._torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=longest + 1,
                    do_sample=False,
                    prefix_allowed_tokens_fn=allowed,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.end_ids,
                )
            for row, index in enumerate(batch):
                generated = [t for t in out[row, width:].tolist()]
                # Everything after the first end token is padding.
                for j, token in enumerate(generated):
                    if token in self.end_ids:
                        generated = generated[: j + 1]
                        break
                answers[index] = automata[index].parse(generated)
                self.stats.generated_tokens += len(generated)
            self.stats.prompt_tokens += int(mask.sum())
            self.stats.count("choose", len(batch))
        return answers

    @uses_adapter("calibrator")
    def score_yes_no(self, prompts: Sequence[Messages]) -> list[YesNo]:
        torch = self._torch
        rendered = [self.render(p) for p in prompts]
        results: list[YesNo | None] = [None] * len(rendered)
        # Runs of prompts that share a prefix (one item, several tags): the prefix is computed once
        # and its cache reused by every suffix.
        groups: list[list[int]] = []
        for i, ids in enumerate(rendered):
            if groups:
                first = rendered[groups[-1][0]]
                if common_prefix(first, ids) >= min(len(first), len(ids)) // 2 and len(groups[-1]) < 64:
                    groups[-1].append(i)
                    continue
            groups.append([i])
        singles = [g[0] for g in groups if len(g) == 1]
        for batch in self._batches([len(rendered[i]) for i in singles]):
            rows = [rendered[singles[j]] for j in batch]
            ids, mask, _ = self._left_padded(rows)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, :]
            for row, j in enumerate(batch):
                results[singles[j]] = self._yes_no(logits[row])
            self.stats.prompt_tokens += int(mask.sum())
            self.stats.count("score", len(batch))
        for group in (g for g in groups if len(g) > 1):
            for index, value in zip(group, self._score_shared(group, rendered), strict=True):
                results[index] = value
        return [r for r in results if r is not None]

    def _score_shared(self, group: list[int], rendered: list[list[int]]) -> list[YesNo]:
        torch = self._torch
        prefix_len = min(common_prefix(rendered[group[0]], rendered[i]) for i in group)
        prefix_len = min(prefix_len, min(len(rendered[i]) for i in group) - 1)
        prefix = rendered[group[0]][:prefix_len]
        suffixes = [rendered[i][prefix_len:] for i in group]
        out: list[YesNo] = []
        with torch.inference_mode():
            first = self.model(input_ids=torch.tensor([prefix], device=self.config.device), use_cache=True)
            self.stats.prompt_tokens += len(prefix)
            for start in range(0, len(suffixes), self.config.batch_size):
                chunk = suffixes[start : start + self.config.batch_size]
                cache = _copy_cache(first.past_key_values, len(chunk))
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), prefix_len + width), dtype=torch.long)
                mask[:, :prefix_len] = 1
                for row, suffix in enumerate(chunk):
                    ids[row, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
                    mask[row, prefix_len : prefix_len + len(suffix)] = 1
                positions = torch.arange(prefix_len, prefix_len + width).unsqueeze(0).expand(len(chunk), -1)
                logits = self.model(
                    input_ids=ids.to(self.config.device),
                    attention_mask=mask.to(self.config.device),
                    position_ids=positions.to(self.config.device),
                    past_key_values=cache,
                    use_cache=True,
                ).logits
                for row, suffix in enumerate(chunk):
                    out.append(self._yes_no(logits[row, len(suffix) - 1]))
                self.stats.prompt_tokens += sum(len(s) for s in chunk)
                self.stats.cached_tokens += prefix_len * len(chunk)
        self.stats.count("score", len(group))
        return out

    def _yes_no(self, logits) -> YesNo:
        row = logits.float().log_softmax(-1)
        return YesNo(
            yes=logsumexp([float(row[t]) for t in self.yes_ids]),
            no=logsumexp([float(row[t]) for t in self.no_ids]),
        )

    @uses_adapter("generator")
    def generate(self, prompts: Sequence[Messages], max_tokens: int = 64) -> list[str]:
        rendered = [self.render(p) for p in prompts]
        texts = [""] * len(rendered)
        for batch in self._batches([len(r) for r in rendered]):
            ids, mask, width = self._left_padded([rendered[i] for i in batch])
            with self._torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.end_ids,
                )
            for row, index in enumerate(batch):
                texts[index] = self.tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
                self.stats.generated_tokens += int((out[row, width:] != self.pad_id).sum())
            self.stats.prompt_tokens += int(mask.sum())
            self.stats.count("generate", len(batch))
        return texts

    @uses_adapter("generator")
    def generate_diverse(
        self,
        prompts: Sequence[Messages],
        max_tokens: int = 48,
        num_beams: int = 6,
        num_beam_groups: int = 3,
        diversity_penalty: float = 1.0,
        length_penalty: float = 1.0,
    ) -> list[list[str]]:
        torch = self._torch
        answers: list[list[str]] = []
        for messages in prompts:
            ids = self.render(messages)
            search = DiverseBeamSearch(
                num_beams, num_beam_groups, self.end_ids, diversity_penalty, length_penalty, self.pad_id
            )
            with torch.inference_mode():
                # The prompt is computed once and its cache copied to every beam; generate() would
                # expand the prompt to num_beams rows before computing it.
                out = self.model(input_ids=torch.tensor([ids], device=self.config.device), use_cache=True)
                self.stats.prompt_tokens += len(ids)
                cache = _copy_cache(out.past_key_values, num_beams)
                logprobs = out.logits[:, -1, :].float().log_softmax(-1)
                for step in range(max_tokens):
                    sources, tokens = search.step(logprobs.cpu().numpy())
                    if search.done or step == max_tokens - 1:
                        break
                    cache.reorder_cache(torch.tensor(sources, device=self.config.device))
                    position = torch.full((num_beams, 1), len(ids) + step, device=self.config.device)
                    out = self.model(
                        input_ids=torch.tensor(tokens, device=self.config.device).unsqueeze(1),
                        position_ids=position,
                        past_key_values=cache,
                        use_cache=True,
                    )
                    cache = out.past_key_values
                    logprobs = out.logits[:, -1, :].float().log_softmax(-1)
                    self.stats.generated_tokens += num_beams
            answers.append(
                [
                    self.tokenizer.decode(hypothesis, skip_special_tokens=True).strip()
                    for group in search.results()
                    for hypothesis in group
                ]
            )
            self.stats.count("generate_diverse")
        return answers

    def close(self) -> None:
        self.model = None
        import gc

        gc.collect()


def _copy_cache(cache, batch: int):
    """The prefix cache repeated for a batch of suffixes (the original stays reusable)."""
    import copy

    fresh = copy.deepcopy(cache)
    if batch > 1:
        fresh.batch_repeat_interleave(batch)
    return fresh
