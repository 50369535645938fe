"""Alembic environment for BNN-Tune's own tables.

Run only through :func:`service.migrate.upgrade` (the Config is built in code and the connection
passed in ``config.attributes["connection"]``). Our version table is ``bnn_tune_alembic_version``
so it never clashes with Optuna's ``alembic_version`` in the same database, and autogenerate only
looks at our tables.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from service.migrate import VERSION_TABLE
from service.models import Base

config = context.config


def _include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any):
    if type_ == "table":
        return name in Base.metadata.tables
    return True


def run_migrations_online() -> None:
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_object=_include_object,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline migrations are not supported; use service.migrate.upgrade")
run_migrations_online()
