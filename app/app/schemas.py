"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

# PostgreSQL text cannot hold NUL: refused with a 422 instead of failing at the INSERT.
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200,
                                        pattern=NO_NUL)]
# Past this, OFFSET would overflow PostgreSQL's bigint (a 500); no listing is that long.
MAX_OFFSET = 1_000_000
Description = Annotated[str | None, StringConstraints(max_length=2000, pattern=NO_NUL)]
Password = Annotated[str, Field(min_length=8, max_length=1024)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterIn(Strict):
    email: EmailStr
    password: Password
    invite_code: Annotated[str, Field(max_length=200)] | None = None  # REGISTRATION_MODE=invite


class PasswordChangeIn(Strict):
    current_password: Annotated[str, Field(min_length=1, max_length=1024)]
    new_password: Password


class InviteIn(Strict):
    email: EmailStr | None = None  # only this address may use it
    valid_days: Annotated[int, Field(ge=1, le=90)] = 7


class InviteOut(BaseModel):
    code: str
    email: str | None
    expires_at: datetime


class LoginIn(Strict):
    email: EmailStr
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    is_admin: bool
    created_at: datetime


class ProjectIn(Strict):
    name: Name
    description: Description = None


class ProjectPatch(Strict):
    name: Name | None = None
    description: Description = None


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    role: Literal["owner", "write", "read"] = "owner"  # the caller's role on it
    created_at: datetime
    updated_at: datetime


class MemberIn(Strict):
    email: EmailStr
    role: Literal["read", "write"]


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    role: Literal["read", "write"]
    created_at: datetime


class ApiKeyIn(Strict):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100,
                                           pattern=NO_NUL)]


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str  # shown once: only its hash is stored


class DocumentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    filename: str
    content_type: str
    kind: str
    size_bytes: int
    sha256: str
    status: str
    error: str | None
    chunk_count: int
    attempts: int
    created_at: datetime
    updated_at: datetime
    indexed_at: datetime | None


class SearchIn(Strict):
    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                            max_length=2000)]
    top_k: Annotated[int, Field(ge=1, le=50)] = 5


class SearchHit(BaseModel):
    document_id: uuid.UUID
    filename: str
    chunk_index: int
    page: int | None
    score: float
    snippet: str


class SearchOut(BaseModel):
    query: str
    results: list[SearchHit]


class AskIn(Strict):
    question: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                               max_length=2000)]
    top_k: Annotated[int, Field(ge=1, le=20)] = 5
    provider_id: uuid.UUID | None = None
    # true: text/event-stream (events: sources, token..., done) instead of one JSON body
    stream: bool = False


class AskOut(BaseModel):
    answer: str
    mode: Literal["generative", "extractive"]
    provider: str | None = None
    provider_error: str | None = None
    sources: list[SearchHit]


class ProviderIn(Strict):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100,
                                           pattern=NO_NUL)]
    # https, or http for a host on PROVIDER_HTTP_ALLOWLIST; no user, query or fragment
    base_url: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                               max_length=500, pattern=r"^[\x21-\x7e]+$")]
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                            max_length=200, pattern=NO_NUL)]
    # Sent as an HTTP header: visible ASCII only (anything else failed at the call, a 500).
    api_key: Annotated[str, StringConstraints(min_length=1, max_length=1000,
                                              pattern=r"^[\x21-\x7e]+$")]
    shared: bool = False  # admins only: offered to every user without a provider of their own


class ProviderOut(BaseModel):
    id: uuid.UUID
    name: str
    base_url: str
    model: str
    shared: bool
    api_key_hint: str
    created_at: datetime
