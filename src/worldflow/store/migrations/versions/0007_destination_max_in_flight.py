"""How many requests may be in flight at once to each webhook destination.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.add_column(
        "webhook_destinations",
        sa.Column("max_in_flight", sa.Integer, nullable=False, server_default="32"),
    )


def downgrade() -> None:
    with op.batch_alter_table("webhook_destinations") as batch:
        batch.drop_column("max_in_flight")
