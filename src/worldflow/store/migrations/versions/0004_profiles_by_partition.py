"""An index of profiles by partition and id: a backfill pages through a partition's profiles
in id order, which otherwise sorts the whole partition for every page.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_index("ix_profiles_partition_id", "profiles", ["partition", "id"])


def downgrade() -> None:
    op.drop_index("ix_profiles_partition_id", "profiles")
