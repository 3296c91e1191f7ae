"""Answers from retrieved passages: an OpenAI-compatible chat model when one is
configured and reachable, otherwise an extractive answer made of the passages' sentences
closest to the question. Asking never fails because a provider is missing or down.

Provider calls go through app.outbound (SSRF-safe, size-capped). Whatever goes wrong
with a provider, the user sees one generic ``provider_error`` (PROVIDER_FAILED); the
reason goes to the log only, so the answer cannot be used to probe hosts or ports."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import httpx
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.embeddings import Embedder
from app.models import Provider, User
from app.outbound import (
    ResponseTooLarge,
    Target,
    UnsafeURL,
    check_url,
    iter_lines_capped,
    post_stream,
    read_capped,
)
from app.security import decrypt_secret

PROVIDER_FAILED = "the answer provider could not be used; this answer quotes your documents"


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    base_url: str
    model: str
    api_key: str | None  # None: the stored key cannot be decrypted any more
    operator: bool = False  # from the operator's environment: its URL is trusted


@dataclass(frozen=True)
class Passage:
    number: int
    filename: str
    text: str


class ProviderError(Exception):
    """Why a provider failed: for the log. Users see PROVIDER_FAILED."""


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
    if not settings.offer_env_providers:  # the operator's keys are not offered to users
        return None
    if settings.openai_api_key and settings.openai_api_key.get_secret_value():
        return ProviderConfig("openai", settings.openai_base_url, settings.openai_model,
                              settings.openai_api_key.get_secret_value(), operator=True)
    if settings.deepseek_api_key and settings.deepseek_api_key.get_secret_value():
        return ProviderConfig("deepseek", settings.deepseek_base_url, settings.deepseek_model,
                              settings.deepseek_api_key.get_secret_value(), operator=True)
    return None


SYSTEM_PROMPT = (
    "You are a research assistant. Answer the question using only the numbered context "
    "passages from the user's documents. Cite passages like [1]. If the passages do not "
    "contain the answer, say so briefly."
)


def _request(provider: ProviderConfig, question: str, passages: Sequence[Passage],
             stream: bool) -> dict[str, object]:
    if provider.api_key is None:
        raise ProviderError("stored API key cannot be decrypted (ENCRYPTION_KEY changed?)")
    context = "\n\n".join(f"[{p.number}] ({p.filename})\n{p.text}" for p in passages)
    return {
        "model": provider.model,
        "temperature": 0.2,
        "max_tokens": 600,
        "stream": stream,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"},
        ],
    }


def _target(provider: ProviderConfig, settings: Settings) -> Target:
    allow = list(settings.provider_http_allowlist)
    try:
        target = check_url(provider.base_url, allow)
        if provider.operator:  # the operator's own URL is trusted like an allowlisted one
            target = check_url(provider.base_url, [*allow, target.host])
        return target
    except UnsafeURL as exc:
        raise ProviderError(f"refused URL: {exc}") from exc


def _call(provider: ProviderConfig, body: dict[str, object],
          settings: Settings) -> AbstractContextManager[httpx.Response]:
    return post_stream(_target(provider, settings), "/chat/completions", body,
                       {"Authorization": f"Bearer {provider.api_key}"},
                       settings.llm_timeout_seconds)


def _wrap(exc: Exception) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, UnsafeURL):
        return ProviderError(f"refused address: {exc}")
    if isinstance(exc, ResponseTooLarge):
        return ProviderError(str(exc))
    return ProviderError(f"provider unreachable: {type(exc).__name__}")


def generate(provider: ProviderConfig, question: str, passages: Sequence[Passage],
             settings: Settings) -> str:
    body = _request(provider, question, passages, stream=False)
    try:
        with _call(provider, body, settings) as resp:
            if resp.status_code != 200:
                raise ProviderError(f"provider answered HTTP {resp.status_code}")
            raw = read_capped(resp, settings.provider_max_response_bytes)
    except (httpx.HTTPError, UnsafeURL, ResponseTooLarge, ProviderError) as exc:
        raise _wrap(exc) from exc
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ProviderError("provider response not understood") from exc
    if not isinstance(content, str) or not content.strip():
        raise ProviderError("provider returned an empty answer")
    return content.strip()


def generate_stream(provider: ProviderConfig, question: str, passages: Sequence[Passage],
                    settings: Settings) -> Iterator[str]:
    """The answer's pieces as the provider streams them (OpenAI's SSE chunks)."""
    body = _request(provider, question, passages, stream=True)
    try:
        with _call(provider, body, settings) as resp:
            if resp.status_code != 200:
                raise ProviderError(f"provider answered HTTP {resp.status_code}")
            for line in iter_lines_capped(resp, settings.provider_max_response_bytes):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    piece = json.loads(data)["choices"][0].get("delta", {}).get("content")
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                    raise ProviderError("provider stream not understood") from exc
                if isinstance(piece, str) and piece:
                    yield piece
    except (httpx.HTTPError, UnsafeURL, ResponseTooLarge, ProviderError) as exc:
        raise _wrap(exc) from exc


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


def words(text: str) -> Iterator[str]:
    """An answer split into word-sized pieces (the extractive answer's stream)."""
    yield from re.findall(r"\S+\s*", text)
