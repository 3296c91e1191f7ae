"""Runs on an app host as the app's user with its environment (bench.lab.app_run): the
reference. The chunks of whole documents that the Celery path indexed, read back from ChromaDB,
embedded and upserted by Chroma's own default embedder (chromadb's DefaultEmbeddingFunction, which
builds an ONNXMiniLM_L6_V2 per call: fp32 all-MiniLM-L6-v2, every text padded to 256 tokens,
batches of 32, onnxruntime's default threads) into a scratch collection of the same server, one
upsert per document; then the app's embedder on the same texts.
"""
import json
import os
import sys
import time

import chromadb
import numpy as np
from app.config import get_settings
from app.embeddings import Embedder, locate_model
from app.vectorstore import VectorStore, host_port_ssl
from chromadb.api.types import DefaultEmbeddingFunction, EmbeddingFunction
from chromadb.config import Settings as ChromaSettings
from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

with open(sys.argv[1]) as f:
    cfg = json.load(f)
s = get_settings()
store = VectorStore(s, timeout=600)
col = store.client().get_collection(store.collection_name(cfg["project"]), embedding_function=None)
docs = []
for d in cfg["documents"]:
    r = col.get(where={"document_id": d}, include=["documents", "metadatas"])
    pairs = sorted(zip(r["metadatas"], r["documents"]), key=lambda p: p[0]["chunk_index"])
    docs.append((d, [t for _, t in pairs]))
texts = [t for _, ts in docs for t in ts]
assert str(ONNXMiniLM_L6_V2.DOWNLOAD_PATH).startswith(os.environ["HOME"]), ONNXMiniLM_L6_V2.DOWNLOAD_PATH

# Composition, not a subclass: Chroma 1.x ignores an embedding function that is an instance of
# DefaultEmbeddingFunction and embeds with the collection's configured default instead, so a
# timing subclass was never called (its time stayed 0).
class Timed(EmbeddingFunction):
    seconds = 0.0
    calls = 0
    def __init__(self):
        self.inner = DefaultEmbeddingFunction()
    def __call__(self, input):
        t0 = time.perf_counter()
        out = self.inner(input)
        Timed.seconds += time.perf_counter() - t0
        Timed.calls += 1
        return out

out = {"documents": len(docs), "texts": len(texts), "chars_mean": sum(map(len, texts)) / len(texts),
       "load_before": os.getloadavg()[0]}
t0 = time.perf_counter()
DefaultEmbeddingFunction()(["warm the page cache"])
out["default_ef_one_call_s"] = round(time.perf_counter() - t0, 3)
# The first of CHROMA_URL's servers, as the app's reads prefer it.
host, port, ssl = host_port_ssl(s.chroma_urls[0])
client = chromadb.HttpClient(host=host, port=port, ssl=ssl, headers=s.chroma_headers,
                             settings=ChromaSettings(anonymized_telemetry=False))
name = cfg["collection"]
ref = client.create_collection(name=name, embedding_function=Timed(), configuration={"hnsw": {"space": "cosine"}})
try:
    t0 = time.perf_counter()
    for d, ts in docs:
        ref.upsert(ids=[f"{d}:{i}" for i in range(len(ts))], documents=ts,
                   metadatas=[{"project_id": cfg["project"], "document_id": d, "chunk_index": i} for i in range(len(ts))])
    secs = time.perf_counter() - t0
    assert ref.count() == len(texts), ref.count()
    got = ref.get(ids=[f"{docs[0][0]}:{i}" for i in range(len(docs[0][1]))], include=["embeddings"])
    by_id = dict(zip(got["ids"], got["embeddings"]))
    ref_vecs = np.array([by_id[f"{docs[0][0]}:{i}"] for i in range(len(docs[0][1]))], dtype=np.float32)
finally:
    client.delete_collection(name)
out["default_ef"] = {"seconds": round(secs, 2), "embed_s": round(Timed.seconds, 2), "upsert_s": round(secs - Timed.seconds, 2),
                     "calls": Timed.calls, "texts_per_s": len(texts) / secs, "embed_texts_per_s": len(texts) / Timed.seconds}
for threads in (2, 1):
    e = Embedder(locate_model(s.embedding_model_dir), threads=threads, batch_size=s.embedding_batch_size)
    e.embed(texts[:4])
    t0 = time.perf_counter()
    vecs = [e.embed(ts) for _, ts in docs]
    secs = time.perf_counter() - t0
    out[f"app_embed_threads_{threads}"] = {"seconds": round(secs, 2), "texts_per_s": len(texts) / secs}
cos = (vecs[0] * ref_vecs).sum(axis=1)
out["cosine_app_vs_default"] = {"min": float(cos.min()), "mean": float(cos.mean())}
out["load_after"] = os.getloadavg()[0]
print("BENCH-RESULT " + json.dumps(out))
