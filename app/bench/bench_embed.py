"""Embedding throughput of the local all-MiniLM-L6-v2 ONNX embedder (not run by the tests).

    python app/bench/bench_embed.py [--threads 1 2] [--batch 8 32] [--n 500]

Prints texts/second for short sentences and for ~700-character chunks (the chunk size the
indexer produces with CHUNK_SIZE=800).
"""

from __future__ import annotations

import argparse
import time

from app.embeddings import Embedder, locate_model
from app.textproc import chunk_text

WORDS = ("retrieval augmented generation indexes research papers source code and notes so "
         "that a language model can answer questions with citations from the documents").split()


def short_texts(n: int) -> list[str]:
    return [f"Sentence {i} is about {WORDS[i % len(WORDS)]} and {WORDS[(i * 7) % len(WORDS)]}."
            for i in range(n)]


def chunk_texts(n: int) -> list[str]:
    paras = [f"Paragraph {i}: " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(110))
             for i in range(n)]
    return [c.text for c in chunk_text("\n\n".join(paras), 800, 150)][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    files = locate_model()
    corpora = {"short (~12 tokens)": short_texts(args.n),
               "chunks (~700 chars)": chunk_texts(max(args.n // 5, 20))}
    for threads in args.threads:
        for batch in args.batch:
            e = Embedder(files, threads=threads, batch_size=batch)
            e.embed(corpora["short (~12 tokens)"][:16])  # warm-up
            for name, texts in corpora.items():
                t0 = time.perf_counter()
                e.embed(texts)
                dt = time.perf_counter() - t0
                print(f"threads={threads} batch={batch} {name}: {len(texts) / dt:7.1f} texts/s "
                      f"({len(texts)} in {dt:.2f}s)")


if __name__ == "__main__":
    main()
