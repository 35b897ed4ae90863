"""The scene registry: scenes and their tagged objects.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.create_table(
        "scenes",
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("world", sa.String(64), nullable=True),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "scene_objects",
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("object_id", sa.String(128), primary_key=True),
        sa.Column("scene", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("node_path", sa.Text, nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("sku", sa.String(200), nullable=True),
        sa.Column("category", sa.String(200), nullable=True),
        sa.Column("properties", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_scene_objects_workspace_id_scene", "scene_objects",
                    ["workspace_id", "scene"])  # fmt: skip


def downgrade() -> None:
    op.drop_table("scene_objects")
    op.drop_table("scenes")
