"""A PEFT LoRA adapter (``llm4tag train``) as a GGUF LoRA that llama.cpp loads, converted once.

This follows llama.cpp's own ``convert_lora_to_gguf.py``: tensors are renamed with gguf-py's tensor map
(the one llama.cpp's converters use), ``lora_A`` and ``lora_B`` are written as ``<gguf name>.lora_a`` and
``.lora_b``, the file is typed ``adapter``/``lora`` with the adapter's alpha, and where llama.cpp's
converter permutes the base weights (the query and key projections of llama-architecture models, for
its rotary layout) the same permutation is applied to ``lora_B``. That script itself is not on PyPI and
needs the base model's HF folder; this needs only the base GGUF, which the llama.cpp engine has.

The result is cached beside the adapter (``adapter_model.<digest>.gguf``, the digest over the adapter's
files and the base GGUF's identity), or under the model home when the adapter folder is read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from graph_store.durable import fsync_dir, fsync_file
from llm4tag.errors import ModelError

# Architectures whose conversion is checked against transformers+PEFT in tests; others are refused
# rather than converted on trust.
PERMUTED_QK = {"llama"}
SUPPORTED = {"llama", "qwen2"}
PEFT_PREFIX = "base_model.model."


def _digest(adapter: Path, base_gguf: Path) -> str:
    h = hashlib.sha256()
    for name in sorted(p.name for p in adapter.iterdir() if p.name.startswith("adapter_")):
        if name.endswith(".gguf"):
            continue
        h.update(name.encode())
        h.update((adapter / name).read_bytes())
    stat = base_gguf.stat()
    h.update(f"{base_gguf.name}:{stat.st_size}".encode())
    return h.hexdigest()[:16]


def _base_params(base_gguf: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(base_gguf))

    def value(key: str):
        field = reader.fields.get(key)
        if field is None:
            return None
        return field.contents()

    arch = value("general.architecture")
    return {
        "arch": arch,
        "blocks": int(value(f"{arch}.block_count")),
        "heads": int(value(f"{arch}.attention.head_count")),
        "kv_heads": int(value(f"{arch}.attention.head_count_kv") or value(f"{arch}.attention.head_count")),
    }


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.LlamaModel.permute, on the output rows of ``lora_B``."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def peft_to_gguf(adapter: Path, base_gguf: Path) -> Path:
    """The adapter folder's GGUF LoRA for ``base_gguf``, converting it the first time."""
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    name = f"adapter_model.{_digest(adapter, base_gguf)}.gguf"
    for folder in (adapter, _fallback_folder(adapter)):
        if (folder / name).is_file():
            return folder / name
    tensors, alpha = _read_peft(adapter)
    params = _base_params(base_gguf)
    if params["arch"] not in SUPPORTED:
        raise ModelError(
            f"converting LoRA adapters for '{params['arch']}' models is not supported (supported: "
            f"{', '.join(sorted(SUPPORTED))}); serve this adapter with llm.engine: transformers or vllm"
        )
    out = _writable(adapter) or _fallback_folder(adapter)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    _write(target, _rename(tensors, params), alpha, params["arch"])
    return target


def _fallback_folder(adapter: Path) -> Path:
    from llm4tag.llm_weights import model_home

    key = hashlib.sha256(str(adapter.resolve()).encode()).hexdigest()[:16]
    return model_home() / "lora-gguf" / key


def _writable(folder: Path) -> Path | None:
    return folder if os.access(folder, os.W_OK) else None


def _read_peft(adapter: Path) -> tuple[dict[str, np.ndarray], float]:
    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ModelError(f"{adapter}: only LoRA adapters convert to GGUF, not {config.get('peft_type')}")
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    if config.get("use_rslora"):
        # llama.cpp scales by alpha / r; rsLoRA by alpha / sqrt(r).
        alpha = alpha * rank**0.5
    if config.get("use_dora"):
        raise ModelError(f"{adapter}: DoRA adapters have no GGUF form; serve with llm.engine: transformers")
    weights = adapter / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors.numpy import load_file

        raw = load_file(str(weights))
    elif (adapter / "adapter_model.bin").is_file():
        import torch

        raw = {
            k: v.float().numpy()
            for k, v in torch.load(
                adapter / "adapter_model.bin", map_location="cpu", weights_only=True
            ).items()
        }
    else:
        raise ModelError(f"{adapter} holds no adapter_model.safetensors or adapter_model.bin")
    return {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()}, alpha


def _rename(tensors: dict[str, np.ndarray], params: dict) -> dict[str, np.ndarray]:
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = {v: k for k, v in MODEL_ARCH_NAMES.items()}[params["arch"]]
    names = get_tensor_name_map(arch, params["blocks"])
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if key.endswith(marker):
                base = key[: -len(marker)]
                base = base[len(PEFT_PREFIX) :] if base.startswith(PEFT_PREFIX) else base
                pairs.setdefault(base, {})[part] = value
                break
        else:
            raise ModelError(f"adapter tensor '{key}' is not a lora_A/lora_B weight: cannot convert it")
    out: dict[str, np.ndarray] = {}
    for base, parts in pairs.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise ModelError(f"adapter tensor '{base}' lacks its lora_A or lora_B half")
        gguf_name = names.get_name(base + ".weight", try_suffixes=(".weight",))
        if gguf_name is None or gguf_name.startswith(("token_embd", "output.")):
            raise ModelError(f"adapter targets '{base}', which has no llama.cpp LoRA form")
        lora_b = parts["lora_B"]
        if params["arch"] in PERMUTED_QK and base.endswith("q_proj"):
            lora_b = _permute(lora_b, params["heads"])
        elif params["arch"] in PERMUTED_QK and base.endswith("k_proj"):
            lora_b = _permute(lora_b, params["kv_heads"])
        out[gguf_name + ".lora_a"] = np.ascontiguousarray(parts["lora_A"])
        out[gguf_name + ".lora_b"] = np.ascontiguousarray(lora_b)
    return out


def _write(target: Path, tensors: dict[str, np.ndarray], alpha: float, arch: str) -> None:
    from gguf import GGUFType, GGUFWriter, Keys

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".lora-", suffix=".gguf")
    os.close(fd)
    try:
        writer = GGUFWriter(tmp, arch)
        writer.add_type(GGUFType.ADAPTER)
        writer.add_string(Keys.Adapter.TYPE, "lora")
        writer.add_float32(Keys.Adapter.LORA_ALPHA, alpha)
        for name, value in tensors.items():
            writer.add_tensor(name, value)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        fsync_file(tmp)
        os.replace(tmp, target)
        fsync_dir(Path(target).parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
