"""Runs on an app host as the app's user with its environment (bench.lab.app_run): documents
made of the app venv's own Python sources (site-packages, not the client's stdlib), each row written
as the upload route writes it and then indexed by app.indexing.index_document (the function the
Celery task calls) with its embedder, store and settings, except CHUNK_SIZE/CHUNK_OVERLAP. This
host takes every `step`-th document from `first`.
"""
import hashlib
import json
import sys
import sysconfig
import time
import uuid
from pathlib import Path

from app.config import get_settings
from app.db import get_database
from app.embeddings import Embedder, locate_model
from app.indexing import index_document
from app.models import Document, DocumentContent, DocumentStatus
from app.textproc import chunk_text
from app.vectorset import get_vector_store

with open(sys.argv[1]) as f:
    cfg = json.load(f)
s = get_settings()
fill = s.model_copy(update={"chunk_size": cfg["chunk_size"], "chunk_overlap": 0})
db, store = get_database(), get_vector_store(s)
emb = Embedder(locate_model(s.embedding_model_dir), s.embedding_threads, s.embedding_batch_size)
per, need = cfg["chunks_per_doc"], cfg["chunks"]
def documents():
    cur = ""
    for p in sorted(Path(sysconfig.get_paths()["purelib"]).rglob("*.py")):
        try:
            text = p.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "\x00" in text:
            continue
        cur += f"# ===== {p.name} =====\n{text}\n"
        while len(cur) > per * fill.chunk_size:
            chunks = chunk_text(cur[: 2 * per * fill.chunk_size], fill.chunk_size, 0)
            if len(chunks) < per:
                break
            yield cur[: chunks[per - 1].end]
            cur = cur[chunks[per - 1].end:]
done, made, t0, n = 0, [], time.time(), 0
for i, text in enumerate(documents()):
    if done >= need:
        break
    if i % cfg["step"] != cfg["first"]:
        continue
    if need - done < per:
        text = text[: chunk_text(text, fill.chunk_size, 0)[need - done - 1].end]
    data = text.encode()
    with db.session() as ses:
        doc = Document(project_id=uuid.UUID(cfg["project"]), filename=f"site-packages-{i:03d}.txt", content_type="text/plain",
                       kind="text", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                       status=DocumentStatus.pending)
        ses.add(doc)
        ses.flush()
        ses.add(DocumentContent(document_id=doc.id, data=data))
        doc_id = doc.id
    outcome = index_document(doc_id, db, store, emb, fill)
    with db.session() as ses:
        chunks = ses.get(Document, doc_id).chunk_count
    assert outcome == "ready", outcome
    done += chunks
    made.append(str(doc_id))
print("BENCH-RESULT " + json.dumps({"documents": made, "chunks": done, "seconds": time.time() - t0}))
