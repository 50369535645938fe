"""The columns BNN-Tune reads of Optuna's own tables (Optuna creates and migrates them).

The enum types carry Optuna's PostgreSQL enum names so that bound values are cast to them.
"""

from __future__ import annotations

import enum

from optuna.trial import TrialState
from sqlalchemy import Column, Enum, Float, Integer, MetaData, String, Table

__all__ = ["ValueType", "optuna_studies", "optuna_trials", "optuna_values"]


class ValueType(enum.Enum):
    """Optuna's ``trial_values.value_type`` (stored by name)."""

    FINITE = 1
    INF_POS = 2
    INF_NEG = 3


_metadata = MetaData()
optuna_studies = Table(
    "studies",
    _metadata,
    Column("study_id", Integer, primary_key=True),
    Column("study_name", String(512)),
)
optuna_trials = Table(
    "trials",
    _metadata,
    Column("trial_id", Integer, primary_key=True),
    Column("number", Integer),
    Column("study_id", Integer),
    Column("state", Enum(TrialState, name="trialstate", create_constraint=False)),
)
optuna_values = Table(
    "trial_values",
    _metadata,
    Column("trial_value_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("objective", Integer),
    Column("value", Float),
    Column("value_type", Enum(ValueType, name="trialvaluetype", create_constraint=False)),
)
