"""Projects (knowledge bases). Users only ever see their own; anything else is 404."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.api.deps import CurrentUser, SessionDep, SettingsDep, owned_project
from app.log import get_logger
from app.models import Project
from app.schemas import MAX_OFFSET, ProjectIn, ProjectOut, ProjectPatch
from app.vectorset import get_vector_store
from app.vectorstore import VectorStoreUnavailable

router = APIRouter(prefix="/projects", tags=["projects"])
log = get_logger("app.api.projects")

NAME_TAKEN = HTTPException(status.HTTP_409_CONFLICT, "a project with this name already exists")


@router.post("", response_model=ProjectOut, status_code=status.HTTP_201_CREATED,
             responses={409: {"description": "name already used by one of your projects"}})
def create_project(body: ProjectIn, user: CurrentUser, session: SessionDep) -> Project:
    project = Project(owner_id=user.id, name=body.name, description=body.description)
    session.add(project)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise NAME_TAKEN from None
    session.refresh(project)
    return project


@router.get("", response_model=list[ProjectOut])
def list_projects(
    user: CurrentUser, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[Project]:
    return list(session.scalars(
        select(Project).where(Project.owner_id == user.id)
        .order_by(Project.created_at, Project.id).limit(limit).offset(offset)
    ))


@router.get("/{project_id}", response_model=ProjectOut)
def get_project(project_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Project:
    return owned_project(session, user, project_id)


@router.patch("/{project_id}", response_model=ProjectOut,
              responses={409: {"description": "name already used by one of your projects"}})
def update_project(project_id: uuid.UUID, body: ProjectPatch, user: CurrentUser,
                   session: SessionDep) -> Project:
    project = owned_project(session, user, project_id)
    if body.name is not None:
        project.name = body.name
    if "description" in body.model_fields_set:
        project.description = body.description
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise NAME_TAKEN from None
    session.refresh(project)
    return project


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_project(project_id: uuid.UUID, user: CurrentUser, session: SessionDep,
                   settings: SettingsDep) -> Response:
    project = owned_project(session, user, project_id)
    session.delete(project)  # documents and their bytes go by ON DELETE CASCADE
    session.commit()
    try:
        get_vector_store(settings).delete_project(str(project_id))
    except VectorStoreUnavailable:
        log.warning("vector_delete_deferred", project_id=str(project_id))  # reconcile cleans
    return Response(status_code=status.HTTP_204_NO_CONTENT)
