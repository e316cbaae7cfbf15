"""LoRA fine-tuning of the generator or the calibrator through PEFT (paper section 3.3.1 / 3.4).

The loss is on the answer tokens only: the prompt (chat-templated exactly as the engines render it) is
masked with -100. Training is deterministic for a seed (data order, LoRA init, dropout), checkpoints
every ``checkpoint_every`` steps into ``OUT.work/`` and resumes from the last checkpoint whose data and
settings match. The result is written into a temporary folder and renamed to ``OUT``: an adapter folder
(adapter_model.safetensors + adapter_config.json, loadable by PEFT and by vLLM) with
``training_manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graph_store.durable import atomic_folder
from llm4tag.config.finetune import FinetuneConfig, TrainerConfig
from llm4tag.errors import LLM4TagError
from llm4tag.finetune.examples import ROLES, Example, read_training_data
from llm4tag.progress import step as progress_step

log = logging.getLogger("llm4tag.finetune")

ADAPTER_FORMAT = "llm4tag-adapter"
TRAINING_MANIFEST = "training_manifest.json"
WORK_SUFFIX = ".work"


def trainer_settings(config: FinetuneConfig) -> tuple[str, TrainerConfig]:
    import torch

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LLM4TagError("finetune.device is cuda but no CUDA device is available")
    return device, (config.gpu if device == "cuda" else config.cpu)


def tokenize_example(tokenizer, example: Example) -> tuple[list[int], list[int]]:
    """(input ids, labels): the prompt as the engines render it (``render_chat``), then the answer with
    the template's end of turn, so the model also learns to stop. Labels are -100 over the prompt."""
    prompt_text = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        [*example.messages, {"role": "assistant", "content": example.answer}], tokenize=False
    )
    prompt = tokenizer.encode(prompt_text, add_special_tokens=False)
    if full_text.startswith(prompt_text):
        answer = tokenizer.encode(full_text[len(prompt_text) :].rstrip("\n"), add_special_tokens=False)
    else:  # a template that rewrites earlier turns: fall back to answer + end of sequence
        answer = [*tokenizer.encode(example.answer, add_special_tokens=False), tokenizer.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer


def _fingerprint(role: str, data_hash: str, base: str, device: str, trainer: TrainerConfig, config) -> str:
    raw = json.dumps(
        [role, data_hash, base, device, trainer.model_dump(), config.lora.model_dump(), config.seed],
        sort_keys=True,
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # Linux reports ru_maxrss in KiB: the process's peak resident memory (model, activations, optimiser).
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _order(count: int, needed: int, seed: int) -> list[int]:
    """Example indices for ``needed`` draws: one seeded permutation per epoch, so the batch of any
    step is known without replaying the ones before it (resume)."""
    out: list[int] = []
    epoch = 0
    while len(out) < needed:
        perm = list(range(count))
        random.Random(seed * 1000003 + epoch).shuffle(perm)
        out += perm
        epoch += 1
    return out[:needed]


def _collate(torch, rows: Sequence[tuple[list[int], list[int]]], pad_id: int):
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return ids, labels, mask


def mean_loss(model, torch, rows, pad_id: int, device: str, batch_size: int = 4) -> float | None:
    """Token-weighted mean answer loss over ``rows``, without dropout."""
    if not rows:
        return None
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            ids, labels, mask = _collate(torch, rows[start : start + batch_size], pad_id)
            count = int((labels[:, 1:] != -100).sum())
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
            total += float(out.loss) * count
            tokens += count
    if was_training:
        model.train()
    return total / max(tokens, 1)


def train(
    role: str,
    data_dir: str | Path,
    out_dir: str | Path,
    settings,
    *,
    model: str | None = None,
    restart: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter for ``role`` on the examples in ``data_dir``; returns the training manifest.

    ``stop_after`` ends the run after that many steps of this call with a checkpoint and no adapter
    (tests use it to interrupt and resume). ``restart`` discards existing checkpoints.
    """
    if role not in ROLES:
        raise LLM4TagError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    out = Path(out_dir)
    if out.exists():
        raise LLM4TagError(f"{out} already exists: adapters are never overwritten; choose a new folder")
    examples, data_manifest = read_training_data(data_dir, role)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from llm4tag.llm_weights import resolve_llm

    hf_logging.disable_progress_bar()
    config: FinetuneConfig = settings.finetune
    device, trainer = trainer_settings(config)
    base = resolve_llm(model or settings.llm.model)
    if trainer.threads and device == "cpu":
        torch.set_num_threads(trainer.threads)
    try:
        dtype = getattr(torch, trainer.dtype)
    except AttributeError as exc:
        raise LLM4TagError(
            f"finetune.{'gpu' if device == 'cuda' else 'cpu'}.dtype: unknown '{trainer.dtype}'"
        ) from exc
    seed = config.seed
    random.seed(seed)
    torch.manual_seed(seed)
    started = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, too_long = [], 0
    for example in examples:
        ids, labels = tokenize_example(tokenizer, example)
        if len(ids) > trainer.max_length:
            too_long += 1
            continue
        rows.append((ids, labels))
    if not rows:
        raise LLM4TagError(f"every {role} example is longer than max_length={trainer.max_length} tokens")
    per_step = trainer.batch_size * trainer.grad_accum
    total_steps = trainer.max_steps or max(1, math.ceil(trainer.epochs * len(rows) / per_step))
    order = _order(len(rows), total_steps * per_step, seed)

    model_ = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model_, lora)
    if trainer.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable()
        peft_model.enable_input_require_grads()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=trainer.learning_rate, weight_decay=trainer.weight_decay)

    def schedule(step: int) -> float:
        if step < trainer.warmup_steps:
            return (step + 1) / trainer.warmup_steps
        return max(0.0, 1.0 - (step - trainer.warmup_steps) / max(1, total_steps - trainer.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    eval_rows = rows[: trainer.eval_examples]
    fingerprint = _fingerprint(role, data_manifest["hash"], str(base), device, trainer, config)
    work = out.with_name(out.name + WORK_SUFFIX)
    if restart and work.exists():
        shutil.rmtree(work)
    step, losses, loss_before, resumed_from = 0, [], None, None
    checkpoint = _last_checkpoint(work, fingerprint)
    if checkpoint is not None:
        state = load_trainer_state(checkpoint / "trainer.pt")
        set_peft_model_state_dict(peft_model, load_file(str(checkpoint / "adapter_model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, losses, loss_before = state["step"], state["losses"], state["loss_before"]
        resumed_from = step
        log.info("resuming %s training from %s (step %d)", role, checkpoint, step)
    elif work.exists() and any(work.glob("step-*")):
        raise LLM4TagError(
            f"{work} holds checkpoints of other data or settings; pass --restart to discard them"
        )
    if loss_before is None:
        loss_before = mean_loss(peft_model, torch, eval_rows, pad_id, device)
    peft_model.train()
    steps_this_call = 0
    with progress_step(f"train {role}", total=total_steps, unit="step", initial=step, bar=progress) as bar:
        while step < total_steps:
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(trainer.grad_accum):
                first = (step * trainer.grad_accum + micro) * trainer.batch_size
                batch = [rows[i] for i in order[first : first + trainer.batch_size]]
                ids, labels, mask = _collate(torch, batch, pad_id)
                out_ = peft_model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
                )
                (out_.loss / trainer.grad_accum).backward()
                step_loss += float(out_.loss.detach()) / trainer.grad_accum
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            steps_this_call += 1
            losses.append(round(step_loss, 5))
            bar.set_postfix_str(f"loss {step_loss:.4f}")
            bar.update(1)
            interrupt = stop_after is not None and steps_this_call >= stop_after and step < total_steps
            if step % trainer.checkpoint_every == 0 or interrupt:
                _save_checkpoint(
                    work,
                    step,
                    peft_model,
                    torch,
                    optimizer,
                    scheduler,
                    losses,
                    loss_before,
                    fingerprint,
                    trainer.keep_checkpoints,
                )
            if interrupt:
                return {"interrupted_at_step": step, "total_steps": total_steps, "work": str(work)}
    loss_after = mean_loss(peft_model, torch, eval_rows, pad_id, device)
    seconds = time.perf_counter() - started
    import peft
    import transformers

    manifest = {
        "format": ADAPTER_FORMAT,
        "version": 1,
        "role": role,
        "base_model": {"name": model or settings.llm.model, "path": str(base)},
        "data": {
            "path": str(Path(data_dir).resolve()),
            "hash": data_manifest["hash"],
            "role_hash": data_manifest.get("hashes", {}).get(role),
            "created": data_manifest.get("created"),
            "examples": len(examples),
            "used": len(rows),
            "too_long": too_long,
            "mode": data_manifest.get("mode"),
        },
        "steps": total_steps,
        "resumed_from_step": resumed_from,
        "examples_seen": total_steps * per_step,
        "losses": losses,
        "loss_before": loss_before,
        "loss_after": loss_after,
        "eval_examples": len(eval_rows),
        "seconds": round(seconds, 2),
        "peak_memory_mb": _peak_memory_mb(device),
        "device": device,
        "seed": seed,
        "settings": trainer.model_dump(),
        "lora": config.lora.model_dump(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_adapter(out, peft_model, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def _last_checkpoint(work: Path, fingerprint: str) -> Path | None:
    if not work.exists():
        return None
    for folder in sorted(work.glob("step-*"), reverse=True):
        try:
            state = json.loads((folder / "state.json").read_text())
        except (OSError, ValueError):
            continue  # a checkpoint without its state file was never finished
        if state.get("fingerprint") == fingerprint:
            return folder
    return None


def load_trainer_state(path: Path) -> dict[str, Any]:
    """A checkpoint's optimizer, scheduler and random states. Loaded as tensors and plain values only
    (``weights_only``): a checkpoint folder is a file anyone with write access to the work folder can
    replace, and a full unpickle would run whatever code it names."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise LLM4TagError(
            f"{path}: holds objects other than tensors and plain values, so it is not loaded "
            f"(delete the checkpoint folder to train from the start): {str(exc).splitlines()[0]}"
        ) from exc


def _save_checkpoint(work, step, model, torch, optimizer, scheduler, losses, loss_before, fingerprint, keep):
    work.mkdir(parents=True, exist_ok=True)
    with atomic_folder(work / f"step-{step:07d}") as temp:
        model.save_pretrained(temp)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "losses": losses,
                "loss_before": loss_before,
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                # Dropout on a GPU draws from the CUDA generator: saved too, so a resumed run matches.
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            temp / "trainer.pt",
        )
        # state.json last: its presence marks the checkpoint complete.
        (temp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint}))
    for old in sorted(work.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _write_adapter(out: Path, model, manifest: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out) as temp:
        model.save_pretrained(temp)
        (temp / TRAINING_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def read_adapter_manifest(path: str | Path) -> dict[str, Any]:
    """The training manifest of an adapter folder; a clear error for anything else."""
    folder = Path(path)
    if not (folder / "adapter_config.json").is_file():
        raise LLM4TagError(f"{path} is not an adapter folder (no adapter_config.json)")
    manifest_path = folder / TRAINING_MANIFEST
    if not manifest_path.is_file():
        return {}
    return json.loads(manifest_path.read_text())
