"""Create bnn_studies.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bnn_studies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("optuna_study_name", sa.String(length=64), nullable=True),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("n_claimed", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bnn_studies")),
        sa.UniqueConstraint("name", name=op.f("uq_bnn_studies_name")),
        sa.UniqueConstraint("optuna_study_name", name=op.f("uq_bnn_studies_optuna_study_name")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_bnn_studies_status"), "bnn_studies", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_bnn_studies_status"), table_name="bnn_studies")
    op.drop_table("bnn_studies")
