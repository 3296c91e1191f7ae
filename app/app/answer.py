"""Answers from retrieved passages: an OpenAI-compatible chat model when one is
configured and reachable, otherwise an extractive answer made of the passages' sentences
closest to the question. Asking never fails because a provider is missing or down."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.embeddings import Embedder
from app.models import Provider, User
from app.security import decrypt_secret


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    base_url: str
    model: str
    api_key: str | None  # None: the stored key cannot be decrypted any more


@dataclass(frozen=True)
class Passage:
    number: int
    filename: str
    text: str


class ProviderError(Exception):
    pass


class ProviderNotFound(LookupError):
    pass


def _from_row(p: Provider, settings: Settings) -> ProviderConfig:
    return ProviderConfig(p.name, p.base_url, p.model,
                          decrypt_secret(p.api_key_encrypted, settings))


def resolve_provider(session: Session, user: User, settings: Settings,
                     provider_id: uuid.UUID | None) -> ProviderConfig | None:
    """Explicit choice, else the user's newest provider, else the newest shared one, else
    OPENAI_API_KEY / DEEPSEEK_API_KEY from the settings, else None (extractive)."""
    if provider_id is not None:
        p = session.get(Provider, provider_id)
        if p is None or (p.owner_id is not None and p.owner_id != user.id):
            raise ProviderNotFound("provider not found")
        return _from_row(p, settings)
    for owner in (Provider.owner_id == user.id, Provider.owner_id.is_(None)):
        p = session.scalars(select(Provider).where(owner)
                            .order_by(Provider.created_at.desc()).limit(1)).first()
        if p is not None:
            return _from_row(p, settings)
    if settings.openai_api_key and settings.openai_api_key.get_secret_value():
        return ProviderConfig("openai", settings.openai_base_url, settings.openai_model,
                              settings.openai_api_key.get_secret_value())
    if settings.deepseek_api_key and settings.deepseek_api_key.get_secret_value():
        return ProviderConfig("deepseek", settings.deepseek_base_url, settings.deepseek_model,
                              settings.deepseek_api_key.get_secret_value())
    return None


SYSTEM_PROMPT = (
    "You are a research assistant. Answer the question using only the numbered context "
    "passages from the user's documents. Cite passages like [1]. If the passages do not "
    "contain the answer, say so briefly."
)


def generate(provider: ProviderConfig, question: str, passages: Sequence[Passage],
             timeout: float) -> str:
    if provider.api_key is None:
        raise ProviderError("stored API key cannot be decrypted (ENCRYPTION_KEY changed?)")
    context = "\n\n".join(f"[{p.number}] ({p.filename})\n{p.text}" for p in passages)
    body = {
        "model": provider.model,
        "temperature": 0.2,
        "max_tokens": 600,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"},
        ],
    }
    url = provider.base_url.rstrip("/") + "/chat/completions"
    try:
        resp = httpx.post(url, json=body, timeout=httpx.Timeout(timeout, connect=3.0),
                          headers={"Authorization": f"Bearer {provider.api_key}"})
    except httpx.HTTPError as exc:
        raise ProviderError(f"provider unreachable: {type(exc).__name__}") from exc
    if resp.status_code != 200:
        raise ProviderError(f"provider answered HTTP {resp.status_code}")
    try:
        content = resp.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ProviderError("provider response not understood") from exc
    if not isinstance(content, str) or not content.strip():
        raise ProviderError("provider returned an empty answer")
    return content.strip()


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n{2,}|\n(?=[-*#\d])")


def extractive_answer(question_vec: np.ndarray, passages: Sequence[Passage],
                      embedder: Embedder, max_sentences: int = 3) -> str:
    """The passage sentences most similar to the question, in reading order, cited."""
    if not passages:
        return "No relevant passages were found in this project's documents."
    candidates: list[tuple[int, int, str]] = []  # (passage number, position, sentence)
    seen: set[str] = set()
    for p in passages:
        for pos, raw in enumerate(_SENTENCE.split(p.text)):
            sentence = " ".join(raw.split())
            if len(sentence) < 20 or sentence.lower() in seen:
                continue
            seen.add(sentence.lower())
            candidates.append((p.number, pos, sentence))
            if len(candidates) >= 80:
                break
    if not candidates:
        best = passages[0]
        return f"{' '.join(best.text.split())[:600]} [{best.number}]"
    scores = embedder.embed([c[2] for c in candidates]) @ question_vec
    top = sorted(np.argsort(-scores)[:max_sentences].tolist(),
                 key=lambda i: (candidates[i][0], candidates[i][1]))
    return " ".join(f"{candidates[i][2]} [{candidates[i][0]}]" for i in top)
