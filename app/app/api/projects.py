"""Projects (knowledge bases) and their members.

A project belongs to its owner; the owner may share it with other users as ``read``
(see, download, search, ask) or ``write`` (also upload, delete and re-index documents)
members. Anyone else gets 404 for every path, as if the project did not exist; a member
whose role is too low gets 403."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.deps import CurrentUser, SessionDep, SettingsDep, project_access, project_role
from app.errors import ApiError, not_found
from app.log import get_logger
from app.models import Project, ProjectMember, User
from app.quotas import check_projects
from app.schemas import MAX_OFFSET, MemberIn, MemberOut, ProjectIn, ProjectOut, ProjectPatch
from app.vectorset import get_vector_store
from app.vectorstore import VectorStoreUnavailable

router = APIRouter(prefix="/projects", tags=["projects"])
log = get_logger("app.api.projects")


def _name_taken() -> ApiError:
    return ApiError(409, "name_taken", "a project with this name already exists")


def _out(project: Project, role: str) -> ProjectOut:
    return ProjectOut(id=project.id, name=project.name, description=project.description,
                      role=role, created_at=project.created_at,  # type: ignore[arg-type]
                      updated_at=project.updated_at)


@router.post("", response_model=ProjectOut, status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectIn, user: CurrentUser, session: SessionDep,
                   settings: SettingsDep) -> ProjectOut:
    """A new project; 403 ``quota_exceeded`` past QUOTA_PROJECTS."""
    check_projects(session, user.id, settings)
    project = Project(owner_id=user.id, name=body.name, description=body.description)
    session.add(project)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise _name_taken() from None
    session.refresh(project)
    return _out(project, "owner")


@router.get("", response_model=list[ProjectOut])
def list_projects(
    user: CurrentUser, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[ProjectOut]:
    """Own projects and those shared with the caller (``role`` says which)."""
    rows = session.execute(
        select(Project, ProjectMember.role)
        .outerjoin(ProjectMember, (ProjectMember.project_id == Project.id)
                   & (ProjectMember.user_id == user.id))
        .where(or_(Project.owner_id == user.id, ProjectMember.user_id == user.id))
        .order_by(Project.created_at, Project.id).limit(limit).offset(offset))
    return [_out(p, "owner" if p.owner_id == user.id else role) for p, role in rows]


@router.get("/{project_id}", response_model=ProjectOut)
def get_project(project_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> ProjectOut:
    project = project_access(session, user, project_id)
    return _out(project, project_role(session, user, project) or "read")


@router.patch("/{project_id}", response_model=ProjectOut)
def update_project(project_id: uuid.UUID, body: ProjectPatch, user: CurrentUser,
                   session: SessionDep) -> ProjectOut:
    project = project_access(session, user, project_id, "owner")
    if body.name is not None:
        project.name = body.name
    if "description" in body.model_fields_set:
        project.description = body.description
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise _name_taken() from None
    session.refresh(project)
    return _out(project, "owner")


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_project(project_id: uuid.UUID, user: CurrentUser, session: SessionDep,
                   settings: SettingsDep) -> Response:
    project = project_access(session, user, project_id, "owner")
    session.delete(project)  # documents, their bytes and members go by ON DELETE CASCADE
    session.commit()
    try:
        get_vector_store(settings).delete_project(str(project_id))
    except VectorStoreUnavailable:
        log.warning("vector_delete_deferred", project_id=str(project_id))  # reconcile cleans
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _members(session: Session, project_id: uuid.UUID) -> list[MemberOut]:
    rows = session.execute(select(ProjectMember, User.email)
                           .join(User, User.id == ProjectMember.user_id)
                           .where(ProjectMember.project_id == project_id)
                           .order_by(ProjectMember.created_at))
    return [MemberOut(user_id=m.user_id, email=email, role=m.role,  # type: ignore[arg-type]
                      created_at=m.created_at) for m, email in rows]


@router.get("/{project_id}/members", response_model=list[MemberOut])
def list_members(project_id: uuid.UUID, user: CurrentUser,
                 session: SessionDep) -> list[MemberOut]:
    project_access(session, user, project_id)
    return _members(session, project_id)


@router.put("/{project_id}/members", response_model=list[MemberOut])
def put_member(project_id: uuid.UUID, body: MemberIn, user: CurrentUser,
               session: SessionDep) -> list[MemberOut]:
    """Share the project with a registered user, or change their role (owner only).
    An unknown email is 404 ``user_not_found``."""
    project = project_access(session, user, project_id, "owner")
    member = session.scalar(select(User).where(User.email == body.email.strip().lower()))
    if member is None or not member.is_active:
        raise ApiError(404, "user_not_found", "no user with this email")
    if member.id == project.owner_id:
        raise ApiError(409, "owner", "the owner is not a member")
    row = session.get(ProjectMember, (project_id, member.id))
    if row is None:
        session.add(ProjectMember(project_id=project_id, user_id=member.id, role=body.role))
    else:
        row.role = body.role
    session.flush()
    return _members(session, project_id)


@router.delete("/{project_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_member(project_id: uuid.UUID, user_id: uuid.UUID, user: CurrentUser,
                  session: SessionDep) -> Response:
    """Remove a member (the owner), or leave a project shared with you (the member)."""
    project_access(session, user, project_id, "owner" if user_id != user.id else "read")
    row = session.get(ProjectMember, (project_id, user_id))
    if row is None:
        raise not_found("member")
    session.delete(row)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
