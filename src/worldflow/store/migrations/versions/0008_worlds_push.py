"""The world push channel: sources scoped to a world, deliveries by person, presence.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column("sources", sa.Column("world", sa.String(64), nullable=True))
    op.add_column("deliveries", sa.Column("profile_id", sa.String(40), nullable=True))
    op.create_index("ix_deliveries_by_profile", "deliveries",
                    ["channel", "workspace_id", "profile_id", "state"])  # fmt: skip
    op.create_table(
        "presence",
        sa.Column("connection_id", sa.String(64), primary_key=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("world", sa.String(64), nullable=False),
        sa.Column("worker", sa.String(64), nullable=False),
        sa.Column("profile_id", sa.String(40), nullable=True),
        sa.Column("anonymous_id", sa.String(200), nullable=True),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("zone", sa.String(200), nullable=True),
        sa.Column("connected_ms", sa.BigInteger, nullable=False),
        sa.Column("seen_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_presence_workspace_id_world", "presence", ["workspace_id", "world"])
    op.create_index("ix_presence_workspace_id_profile_id", "presence",
                    ["workspace_id", "profile_id"])  # fmt: skip


def downgrade() -> None:
    op.drop_table("presence")
    op.drop_index("ix_deliveries_by_profile", "deliveries")
    op.drop_column("deliveries", "profile_id")
    op.drop_column("sources", "world")
