"""Create or upgrade the database: our Alembic migrations plus Optuna's RDB schema.

Migrations run only here (``bnn-tune migrate`` calls :func:`upgrade`), never at import or app
startup; the app reports a database that is not migrated through ``GET /ready``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, inspect, text

from service.settings import normalize_database_url

__all__ = ["VERSION_TABLE", "OPTUNA_VERSION_TABLE", "upgrade", "head_revision", "check_migrated"]

VERSION_TABLE = "bnn_tune_alembic_version"
OPTUNA_VERSION_TABLE = "alembic_version"
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _alembic_config():  # -> alembic.config.Config (imported lazily: alembic is only for here)
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


@lru_cache
def head_revision() -> str:
    """The newest revision of our migrations."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(database_url: str) -> None:
    """Run our migrations to head and create (or check) Optuna's tables. Idempotent."""
    import optuna
    from alembic import command

    from service.db import make_engine, optuna_engine_kwargs

    url = normalize_database_url(database_url)
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = _alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    storage = optuna.storages.RDBStorage(url, engine_kwargs=optuna_engine_kwargs(url))
    storage.engine.dispose()


def check_migrated(engine: Engine) -> str | None:
    """None when our head revision and Optuna's tables are present, else what is missing."""
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        if VERSION_TABLE not in tables:
            return f"table {VERSION_TABLE} is missing; run `bnn-tune migrate`"
        current = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        if current != head_revision():
            return f"schema at revision {current}, expected {head_revision()}; run migrate"
        if "version_info" not in tables or "studies" not in tables:
            return "Optuna's tables are missing; run `bnn-tune migrate`"
    return None
