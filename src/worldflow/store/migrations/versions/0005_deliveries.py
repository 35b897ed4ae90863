"""Webhook destinations and the deliveries of actions.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "webhook_destinations",
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("headers", sa.Text, nullable=False, server_default="{}"),
        sa.Column("timeout_ms", sa.Integer, nullable=False, server_default="5000"),
        sa.Column("rate_per_s", sa.Float, nullable=True),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("circuit_state", sa.String(16), nullable=False, server_default="closed"),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("opened_at_ms", sa.BigInteger, nullable=True),
        sa.Column("reopen_at_ms", sa.BigInteger, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("destination_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_ms", sa.BigInteger, nullable=True),
        sa.Column("replayed_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_deliveries_channel_state_next_attempt_ms", "deliveries",
                    ["channel", "state", "next_attempt_ms"])  # fmt: skip
    op.create_index(
        "ix_deliveries_pending_by_destination",
        "deliveries",
        ["channel", "state", "workspace_id", "destination_id", "next_attempt_ms"],
    )
    op.create_index("ix_deliveries_workspace_id_state_created_ms", "deliveries",
                    ["workspace_id", "state", "created_ms"])  # fmt: skip


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("webhook_destinations")
