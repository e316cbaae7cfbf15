"""The sentence encoder exported for the faster CPU runtimes, made here from the model's own weights
(nothing is fetched): an ONNX graph of its transformer (run by onnxruntime, and by OpenVINO, which
reads ONNX as it is) and that graph's int8 dynamic quantization (onnxruntime's quantizer).

Why not sentence-transformers' own ``backend="onnx"/"openvino"`` exports: they go through Optimum,
whose packages pin transformers below the 5.x this project runs (optimum-onnx 0.1: transformers<4.58;
optimum-intel 2.2: transformers<5.6 and torchvision, which pulls a CUDA torch). The same two tools do
the work here directly: torch's ONNX exporter and onnxruntime's ``quantize_dynamic``.

Layout under ``$LLM4TAG_HOME/encoders`` (default ``~/.cache/llm4tag/encoders``)::

    <name>-<fingerprint>/onnx/model.onnx        fp32 graph: last_hidden_state from the token inputs
    <name>-<fingerprint>/onnx-int8/model.onnx   int8 weights (per channel) of every MatMul
    <name>-<fingerprint>/<variant>/export.json  how it was made, and its agreement with torch fp32

Each export is made once, under a lock (two replicas may start at once), into a temporary folder
that is renamed into place whole, so an interrupted export never looks made. ``llm4tag models install
encoder`` makes the configured one at install time; otherwise the first Encoder that needs it does.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graph_store.durable import atomic_folder, exclusive_lock, file_digest, recover_folder
from llm4tag.encoder_runtimes import OnnxRuntime, TextBatcher
from llm4tag.errors import ModelError
from llm4tag.llm_weights import llm4tag_home
from llm4tag.progress import step

log = logging.getLogger(__name__)

VARIANTS = ("onnx", "onnx-int8")
# The int8 recipe, named in the encoder id of the vectors it makes: a changed recipe makes other
# vectors, so it must get a new name (and stores built with the old one are refused).
INT8_RECIPE = "int8-ort-dynamic-perchannel-matmul"
MODEL_FILE = "model.onnx"
MANIFEST = "export.json"
# Texts the export is checked on against the torch model it came from.
CHECK_TEXTS = (
    "I am still waiting on my card?",
    "How do I top up my account by bank transfer, and how long does it take to arrive?",
    "Stainless steel kitchen knife set with wooden block, 6 pieces",
    "library for reading and writing compressed archives (development files)",
)
# The fp32 graph computes what torch computes: a worse agreement means a broken export.
MIN_FP32_COSINE = 0.9999


@dataclass(frozen=True)
class Export:
    """An export on disk: the ONNX file, and what the runtime needs to know to use it."""

    path: Path
    inputs: tuple[str, ...]
    dim: int
    manifest: dict


def exports_home() -> Path:
    return llm4tag_home() / "encoders"


def export_folder(name: str, fingerprint: str, variant: str) -> Path:
    return exports_home() / f"{name}-{fingerprint}" / variant


def find_export(name: str, fingerprint: str, variant: str) -> Export | None:
    """The export if it is made and whole (its file has the size its manifest recorded)."""
    folder = export_folder(name, fingerprint, variant)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    model = folder / MODEL_FILE
    if not model.is_file() or model.stat().st_size != manifest.get("file", {}).get("bytes"):
        return None
    return Export(model, tuple(manifest["inputs"]), int(manifest["dim"]), manifest)


def ensure_export(model_path: str, name: str, fingerprint: str, variant: str) -> Export:
    """The export of ``variant``, made now (once, under a lock) if it is not made yet."""
    if variant not in VARIANTS:
        raise ModelError(f"encoder export must be one of {', '.join(VARIANTS)}, got {variant!r}")
    found = find_export(name, fingerprint, variant)
    if found is not None:
        return found
    models = exports_home() / f"{name}-{fingerprint}"
    models.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(models / ".lock"):
        return _made(model_path, name, fingerprint, variant)


def _made(model_path: str, name: str, fingerprint: str, variant: str) -> Export:
    """The export, made if missing; the caller holds the model's export lock."""
    found = find_export(name, fingerprint, variant)
    if found is not None:
        return found
    folder = export_folder(name, fingerprint, variant)
    recover_folder(folder)
    if variant == "onnx-int8":
        _quantize(_made(model_path, name, fingerprint, "onnx"), model_path, folder)
    else:
        _export_fp32(model_path, folder)
    made = find_export(name, fingerprint, variant)
    if made is None:  # pragma: no cover - the folder was renamed into place whole just above
        raise ModelError(f"the {variant} export of encoder {name} in {folder} is incomplete")
    return made


def _sentence_transformer(model_path: str):
    """The model as sentence-transformers loads it, with eager attention: the ONNX exporter traces
    the plain attention ops, which onnxruntime and OpenVINO both fuse."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(
            model_path, device="cpu", model_kwargs={"attn_implementation": "eager"}
        ).eval()
    except Exception as exc:
        raise ModelError(f"cannot load encoder from {model_path} to export it: {exc}") from exc
    check_exportable(model, model_path)
    return model


def check_exportable(model, model_path: str) -> None:
    """Only a transformer, mean pooling and (optionally) normalisation: what the runtimes reproduce."""
    kinds = [type(module).__name__ for module in model]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ModelError(
            f"encoder {model_path} has modules {kinds}; the onnx and openvino backends run "
            "Transformer + mean Pooling (+ Normalize) models: use encoder.backend: torch"
        )
    if model[1].pooling_mode != "mean":
        raise ModelError(
            f"encoder {model_path} pools with {model[1].pooling_mode!r}; the onnx and openvino backends "
            "run mean pooling: use encoder.backend: torch"
        )


class _LastHiddenState:
    """The transformer with named tensor inputs and one output (the exporter passes inputs by
    position, and transformers 5's forward takes other arguments there)."""

    def __new__(cls, transformer, inputs: Sequence[str]):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.transformer = transformer

            def forward(self, *tensors):
                return self.transformer(**dict(zip(inputs, tensors, strict=True))).last_hidden_state

        return Wrapped().eval()


def _export_fp32(model_path: str, folder: Path) -> None:
    import torch

    started = time.perf_counter()
    with step("export encoder to ONNX", unit="file"):
        model = _sentence_transformer(model_path)
        transformer = model[0].auto_model
        features = model.preprocess(list(CHECK_TEXTS[:2]))
        inputs = tuple(k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features)
        axes = {name: {0: "batch", 1: "tokens"} for name in (*inputs, "last_hidden_state")}
        with atomic_folder(folder) as tmp:
            # The TorchScript exporter (the dynamo one needs onnxscript, a dependency for nothing more
            # here); its tracer warns about Python branches on shapes, which hold for every batch.
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _LastHiddenState(transformer, inputs),
                    tuple(features[k] for k in inputs),
                    str(tmp / MODEL_FILE),
                    input_names=list(inputs),
                    output_names=["last_hidden_state"],
                    dynamic_axes=axes,
                    opset_version=17,
                    dynamo=False,
                )
            agreement = _agreement(model, tmp / MODEL_FILE, inputs)
            if agreement["min"] < MIN_FP32_COSINE:
                raise ModelError(
                    f"the ONNX export of {model_path} does not compute what the model computes (cosine "
                    f"min {agreement['min']:.5f} < {MIN_FP32_COSINE}); use encoder.backend: torch"
                )
            _write_manifest(tmp, "onnx", model_path, model, inputs, agreement, started)
    log.info("encoder exported to %s", folder)


def _quantize(source: Export, model_path: str, folder: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.onnx_quantizer import onnx_proto

    started = time.perf_counter()
    with step("quantize encoder to int8", unit="file"), atomic_folder(folder) as tmp:
        # Per-channel weights and MatMuls only: per-tensor scales (the quantizer's default) moved
        # vectors to cosine 0.96 of fp32's (0.993 per channel), and int8 word embeddings cost a little
        # agreement for no speed. The quantizer advises pre-processing on every run, at WARNING on the
        # root logger; the result without it is what docs/performance.md measures.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                str(source.path),
                str(tmp / MODEL_FILE),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                extra_options={"DefaultTensorType": onnx_proto.TensorProto.FLOAT},
            )
        finally:
            root.setLevel(level)
        model = _sentence_transformer(model_path)
        agreement = _agreement(model, tmp / MODEL_FILE, source.inputs)
        _write_manifest(tmp, "onnx-int8", model_path, model, source.inputs, agreement, started)
    log.info("encoder quantized to %s", folder)


def _agreement(model, onnx_file: Path, inputs: Sequence[str]) -> dict:
    """Cosine of the export's vectors with the torch model's on CHECK_TEXTS."""
    reference = model.encode(list(CHECK_TEXTS), normalize_embeddings=True, convert_to_numpy=True)
    runtime = OnnxRuntime(onnx_file, threads=1)
    batcher = TextBatcher(model.tokenizer, inputs, model.max_seq_length, batch_size=len(CHECK_TEXTS))
    vectors = batcher.encode(list(CHECK_TEXTS), runtime)
    cosines = np.sum(vectors * reference, axis=1)
    return {"texts": len(CHECK_TEXTS), "mean": float(cosines.mean()), "min": float(cosines.min())}


def _write_manifest(tmp: Path, variant, model_path, model, inputs, agreement, started) -> None:
    import onnxruntime
    import torch

    manifest = {
        "variant": variant,
        "recipe": INT8_RECIPE if variant == "onnx-int8" else "fp32",
        "source": model_path,
        "inputs": list(inputs),
        "dim": int(model.get_embedding_dimension()),
        "max_seq_length": model.max_seq_length,
        "file": file_digest(tmp / MODEL_FILE),
        "agreement_with_torch_fp32": agreement,
        "made_with": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "seconds": round(time.perf_counter() - started, 1),
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
