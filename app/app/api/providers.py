"""Answer providers (OpenAI-compatible endpoints). API keys are stored Fernet-encrypted
(ENCRYPTION_KEY) and never returned; responses show only the key's last 4 characters.
Base URLs are checked by app.outbound (https, public addresses; 422 otherwise)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status
from sqlalchemy import or_, select

from app.api.deps import CurrentUser, SessionDep, SettingsDep
from app.config import Settings
from app.errors import ApiError, not_found
from app.models import Provider
from app.outbound import UnsafeURL, check_url
from app.schemas import ProviderIn, ProviderOut
from app.security import decrypt_secret, encrypt_secret

router = APIRouter(prefix="/providers", tags=["providers"])


def _out(p: Provider, settings: Settings) -> ProviderOut:
    key = decrypt_secret(p.api_key_encrypted, settings)
    hint = ("…" + key[-4:]) if key and len(key) >= 8 else ("undecryptable" if key is None
                                                            else "…")
    return ProviderOut(id=p.id, name=p.name, base_url=p.base_url, model=p.model,
                       shared=p.owner_id is None, api_key_hint=hint, created_at=p.created_at)


@router.post("", response_model=ProviderOut, status_code=status.HTTP_201_CREATED)
def create_provider(body: ProviderIn, user: CurrentUser, session: SessionDep,
                    settings: SettingsDep) -> ProviderOut:
    """``base_url`` must be https (plain http only for hosts on PROVIDER_HTTP_ALLOWLIST),
    with no user, query or fragment, and not a private or local address: else 422."""
    if body.shared and not user.is_admin:
        raise ApiError(403, "admin_required", "only admins may add shared providers")
    try:
        target = check_url(body.base_url, settings.provider_http_allowlist)
    except UnsafeURL as exc:
        raise ApiError(422, "invalid_url", f"base_url: {exc}") from None
    p = Provider(
        owner_id=None if body.shared else user.id, name=body.name,
        base_url=target.url, model=body.model,
        api_key_encrypted=encrypt_secret(body.api_key, settings),
    )
    session.add(p)
    session.flush()
    session.refresh(p)
    return _out(p, settings)


@router.get("", response_model=list[ProviderOut])
def list_providers(user: CurrentUser, session: SessionDep,
                   settings: SettingsDep) -> list[ProviderOut]:
    rows = session.scalars(
        select(Provider).where(or_(Provider.owner_id == user.id, Provider.owner_id.is_(None)))
        .order_by(Provider.created_at)
    )
    return [_out(p, settings) for p in rows]


@router.delete("/{provider_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_provider(provider_id: uuid.UUID, user: CurrentUser,
                    session: SessionDep) -> Response:
    p = session.get(Provider, provider_id)
    if p is None or (p.owner_id is not None and p.owner_id != user.id):
        raise not_found("provider")
    if p.owner_id is None and not user.is_admin:
        raise ApiError(403, "admin_required", "only admins may delete shared providers")
    session.delete(p)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
