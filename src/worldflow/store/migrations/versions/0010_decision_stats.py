"""The evidence of decisions: served, impressions and interactions per placement, arm, offer.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "decision_stats",
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("placement", sa.String(64), primary_key=True),
        sa.Column("arm", sa.String(64), primary_key=True),
        sa.Column("offer", sa.String(64), primary_key=True),
        sa.Column("served", sa.BigInteger, nullable=False),
        sa.Column("impressions", sa.BigInteger, nullable=False),
        sa.Column("interactions", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("decision_stats")
