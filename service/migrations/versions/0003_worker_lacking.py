"""Add bnn_workers.lacking: the data sets a worker cannot load, with the reason.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bnn_workers") as batch:
        batch.add_column(sa.Column("lacking", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bnn_workers") as batch:
        batch.drop_column("lacking")
