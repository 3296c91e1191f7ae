"""Runs on an app host as the app's user with its environment (bench.lab.app_run): after the
project was deleted through the API, what is left of its vectors (deleted with the app's
VectorStore if anything is)."""
import json
import sys

from app.config import get_settings
from app.vectorstore import VectorStore

with open(sys.argv[1]) as f:
    cfg = json.load(f)
store = VectorStore(get_settings(), timeout=900)
name = store.collection_name(cfg["project"])


def left():
    names = {c.name for c in store.client().list_collections()}
    return store.client().get_collection(name, embedding_function=None).count() if name in names else 0


before = left()
if before:
    store.delete_project(cfg["project"])
print("BENCH-RESULT " + json.dumps({"left_after_api_delete": before, "left": left(), "collections": len(store.projects())}))
