"""Answer providers (encrypted API keys) and indexing bookkeeping on documents.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("attempts", sa.Integer(), server_default="0",
                                         nullable=False))
    op.add_column("documents", sa.Column("indexed_at", sa.DateTime(timezone=True),
                                         nullable=True))
    # Documents that were already indexed before this revision keep a sensible timestamp.
    op.execute("UPDATE documents SET indexed_at = updated_at WHERE status = 'ready'")
    op.create_table(
        "providers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("base_url", sa.String(500), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("api_key_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_providers_owner_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_providers"),
    )
    op.create_index("ix_providers_owner_id", "providers", ["owner_id"])


def downgrade() -> None:
    op.drop_index("ix_providers_owner_id", table_name="providers")
    op.drop_table("providers")
    op.drop_column("documents", "indexed_at")
    op.drop_column("documents", "attempts")
