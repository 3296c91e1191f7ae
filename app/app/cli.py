"""``ai-platform`` console script.

Every subcommand ends with one marker line that automation can match:
  migrate       ->  "migrate: changed (...)"        or "migrate: no change (...)"
  migrate --check -> "migrate: pending (...)"        or "migrate: up to date (...)"
  migrate-vectors -> "migrate-vectors: changed (...)" or "migrate-vectors: no change (...)"
  create-admin  ->  "create-admin: created <email>" / "updated" / "no change"
                    (an existing non-admin account only with --promote; exit 1 without)
  check-config  ->  "check-config: ok (...)"        or "check-config: FAILED" (exit 1)
  reencrypt-secrets -> "reencrypt-secrets: changed (...)" or "reencrypt-secrets: no change (...)"
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from app import __version__

if TYPE_CHECKING:
    from app.config import Settings


def _settings(command: str) -> Settings:
    """Settings from the environment, or exit 1 with one line per problem."""
    from pydantic import ValidationError

    from app.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]).upper()
            msg = str(err["msg"]).removeprefix("Value error, ")
            print(f"config error: {where + ': ' if where else ''}{msg}", file=sys.stderr)
        print(f"{command}: FAILED", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    from app import migrate

    settings = _settings("migrate")
    cfg = migrate.alembic_config(settings.database_url)
    if args.check:
        # What an upgrade would apply, without applying it (deploys make a restore
        # point before migrations only when there are any).
        current, head = migrate.current_revisions(cfg), migrate.head_revision(cfg)
        if head in current:
            print(f"migrate: up to date (at {head})")
        else:
            print(f"migrate: pending (at {', '.join(current) or 'nothing'}, head {head})")
        return 0
    if args.sql:
        from alembic import command

        command.upgrade(cfg, "head", sql=True)
        return 0
    applied = migrate.upgrade(cfg, "head")
    head = migrate.head_revision(cfg)
    for a in applied:
        print(f"applied {a.revision}: {a.message}")
    if applied:
        print(f"migrate: changed ({len(applied)} revision(s) applied, now at {head})")
    else:
        print(f"migrate: no change (already at {head})")
    return 0


def cmd_migrate_vectors(args: argparse.Namespace) -> int:
    from app.vectorstore import VectorStore

    settings = _settings("migrate-vectors")
    store = VectorStore(settings, timeout=600)
    out = store.migrate_legacy(delete=args.delete)
    if not out.found:
        print(f"migrate-vectors: no change (no shared collection {settings.chroma_collection!r})")
        return 0
    print(f"shared collection {settings.chroma_collection!r}: {out.vectors} vectors, "
          f"{out.copied} copied into {out.projects} project collection(s), "
          f"{out.dropped} left for re-indexing" + (", dropped" if out.deleted else ""))
    if out.copied or out.deleted:
        print(f"migrate-vectors: changed ({out.copied} vectors copied)")
    elif out.dropped:
        print(f"migrate-vectors: no change ({out.dropped} vectors not copied: another embedding "
              "model or no project; reconcile re-indexes their documents)")
    else:
        print("migrate-vectors: no change (every vector is in its project's collection)")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        password = Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
    else:
        password = os.environ.get(args.password_env, "")
        if not password:
            raise SystemExit(f"create-admin: environment variable {args.password_env} is empty")
    if len(password) < 8:
        raise SystemExit("create-admin: password must have at least 8 characters")
    return password


def cmd_create_admin(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from app.db import Database
    from app.models import User
    from app.security import hash_password, verify_password

    password = _read_password(args)
    email = args.email.strip().lower()
    if "@" not in email:
        raise SystemExit("create-admin: invalid email")
    settings = _settings("create-admin")
    db = Database(settings)
    try:
        with db.session() as s:
            user = s.scalar(select(User).where(User.email == email).with_for_update())
            if user is None:
                s.add(User(email=email, password_hash=hash_password(password, settings),
                           is_admin=True))
                outcome = "created"
            else:
                if not user.is_admin and not args.promote:
                    # A self-registered account: making it an admin (and resetting its
                    # password) must be a deliberate act, not a name collision.
                    raise SystemExit(
                        f"create-admin: {email} exists and is not an admin; add --promote "
                        "to make it one (its password is reset and its sessions end)")
                changed = False
                if not user.is_admin or not user.is_active:
                    user.is_admin = user.is_active = True
                    changed = True
                if not verify_password(user.password_hash, password):
                    user.password_hash = hash_password(password, settings)
                    changed = True
                if changed:  # every token issued before stops working
                    user.token_version += 1
                outcome = "updated" if changed else "no change"
    finally:
        db.dispose()
    print(f"create-admin: {outcome} {email}")
    return 0


def cmd_reencrypt_secrets(args: argparse.Namespace) -> int:
    """Provider API keys encrypted with a previous Fernet key, encrypted with ENCRYPTION_KEY."""
    from cryptography.fernet import InvalidToken
    from sqlalchemy import select

    from app.db import Database
    from app.models import Provider
    from app.security import reencrypt_secret

    settings = _settings("reencrypt-secrets")
    db = Database(settings)
    changed = current = lost = 0
    try:
        with db.session() as s:
            for p in s.scalars(select(Provider).with_for_update()):
                try:
                    token = reencrypt_secret(p.api_key_encrypted, settings)
                except InvalidToken:
                    lost += 1  # encrypted with a key that is no longer configured
                    continue
                if token is None:
                    current += 1
                else:
                    p.api_key_encrypted = token
                    changed += 1
    finally:
        db.dispose()
    summary = f"{changed} re-encrypted, {current} already current, {lost} undecryptable"
    print(f"reencrypt-secrets: {'changed' if changed else 'no change'} ({summary})")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from app.config import production_problems

    settings = _settings("check-config")  # exits 1 naming the variables in production
    problems = production_problems(settings) if args.strict else []
    # The release must load: the API's app is built and the Celery app imported,
    # so a deploy stops here, before the switch, on code that cannot start.
    try:
        import app.tasks  # noqa: F401  (the worker's and beat's entry point)
        from app.main import create_app

        create_app(settings)
    except Exception as exc:  # anything the import or the build raises
        problems.append(f"the release does not load: {type(exc).__name__}: {exc}")
    for p in problems:
        print(f"config error: {p}", file=sys.stderr)
    if problems:
        print("check-config: FAILED", file=sys.stderr)
        return 1
    print(f"check-config: ok (environment={settings.environment})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-platform", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ai-platform {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="alembic upgrade head; prints applied revisions")
    p.add_argument("--sql", action="store_true", help="print the SQL instead (offline)")
    p.add_argument("--check", action="store_true",
                   help="only tell whether revisions are pending "
                        "('migrate: pending' or 'migrate: up to date')")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("migrate-vectors",
                       help="copy the shared Chroma collection of earlier releases into one "
                            "collection per project (idempotent)")
    p.add_argument("--delete", action="store_true",
                   help="drop the shared collection afterwards (reconcile does this once "
                        "every host runs this release)")
    p.set_defaults(func=cmd_migrate_vectors)

    p = sub.add_parser("create-admin", help="create or update an admin account (idempotent)")
    p.add_argument("--email", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--password-file", help="file whose first line is the password")
    group.add_argument("--password-env", help="name of an environment variable with it")
    p.add_argument("--promote", action="store_true",
                   help="make an existing non-admin account an admin (refused without it)")
    p.set_defaults(func=cmd_create_admin)

    p = sub.add_parser("reencrypt-secrets",
                       help="encrypt stored provider keys with ENCRYPTION_KEY (after a key "
                            "rotation; idempotent)")
    p.set_defaults(func=cmd_reencrypt_secrets)

    p = sub.add_parser("check-config", help="validate settings (refuses unsafe production)")
    p.add_argument("--strict", action="store_true",
                   help="apply the production secret checks whatever ENVIRONMENT says")
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SystemExit:
        raise
    except Exception as exc:
        from app.log import redact_text

        print(f"{args.command}: error: {redact_text(f'{type(exc).__name__}: {exc}')}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
