"""Profiles, identities, merges, processor state; workspace settings.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("settings", sa.Text, nullable=False, server_default="{}"))
    op.create_table(
        "profiles",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False, server_default="0"),
        sa.Column("merged_into", sa.String(40), nullable=True),
        sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("next_timer_ms", sa.BigInteger, nullable=True),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_profiles_workspace_id_last_seen_ms", "profiles", ["workspace_id", "last_seen_ms"]
    )
    op.create_index(
        "ix_profiles_partition_next_timer_ms", "profiles", ["partition", "next_timer_ms"]
    )
    op.create_table(
        "identities",
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("type", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(200), primary_key=True),
        sa.Column("profile_id", sa.String(40), nullable=False),
    )
    op.create_index("ix_identities_profile_id", "identities", ["profile_id"])
    op.create_table(
        "profile_merges",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("survivor_id", sa.String(40), nullable=False),
        sa.Column("merged_id", sa.String(40), nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("identity", sa.String(260), nullable=False),
    )
    op.create_index(
        "ix_profile_merges_workspace_id_survivor_id",
        "profile_merges",
        ["workspace_id", "survivor_id"],
    )
    op.create_index("ix_profile_merges_merged_id", "profile_merges", ["merged_id"])
    op.create_table(
        "processor_state",
        sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("stream_time_ms", sa.BigInteger, nullable=False),
        sa.Column("counters", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("processor_state", "profile_merges", "identities", "profiles"):
        op.drop_table(table)
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("settings")
