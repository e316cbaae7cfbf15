"""The runtimes of an exported encoder (llm4tag/encoder_exports.py): onnxruntime and OpenVINO run the
transformer's ONNX graph; the model's own tokenizer feeds it and mean pooling over the attention mask
plus L2 normalisation make the sentence vector, as sentence-transformers does for this kind of model."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class OnnxRuntime:
    """An onnxruntime CPU session (thread-safe: concurrent encodes share it)."""

    name = "onnx"

    def __init__(self, model: Path, threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # One graph, run op after op: a second pool of threads between ops only adds contention.
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, inputs)[0]


class OpenVinoRuntime:
    """The ONNX graph compiled by OpenVINO for this CPU. Its inference precision is OpenVINO's choice
    for the CPU (bf16 where the CPU has bf16 instructions): those vectors agree with torch fp32 to a
    cosine of 0.99997 or better on the shared data (docs/performance.md)."""

    name = "openvino"

    def __init__(self, model: Path, threads: int | None):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(model), "CPU", config)
        self.request = self.compiled.create_infer_request()
        # An infer request runs one inference at a time; Serve calls encode from several threads.
        self.lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with self.lock:
            return np.array(self.request.infer(inputs)[0], copy=True)


class TextBatcher:
    """Texts in, unit vectors out: tokenised a batch at a time (texts of similar length together, so
    padding costs little), run, mean-pooled over the real tokens, normalised."""

    def __init__(self, tokenizer, inputs: Sequence[str], max_length: int | None, batch_size: int):
        self.tokenizer, self.inputs = tokenizer, tuple(inputs)
        self.max_length, self.batch_size = max_length, batch_size

    def encode(self, texts: Sequence[str], runtime) -> np.ndarray:
        # Longest first, as sentence-transformers orders them.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(texts), self.batch_size):
            chosen = order[start : start + self.batch_size]
            encoded = self.tokenizer(
                [texts[i] for i in chosen],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            feed = {name: np.asarray(encoded[name], dtype=np.int64) for name in self.inputs}
            vectors = mean_pool(runtime(feed), feed["attention_mask"])
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[chosen] = vectors
        assert out is not None
        return out


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the token vectors where the mask is 1, normalised to unit length."""
    weights = mask[..., None].astype(np.float32)
    summed = np.einsum("btd,bto->bd", hidden.astype(np.float32, copy=False), weights)
    means = summed / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return (means / np.maximum(norms, 1e-12)).astype(np.float32)
