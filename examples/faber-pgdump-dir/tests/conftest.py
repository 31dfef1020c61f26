"""A project whose `production` environment backs up with ``pgdump-dir``, on the test's own
database, with the sqlfiles example handler for its migrations. faber's pytest kit is loaded by
pyproject.toml (``-p faber_core.testing.fixtures``)."""

from __future__ import annotations

import pytest

URL_ENV = "PGDUMP_DIR_DATABASE_URL"


@pytest.fixture
def pgdump_dir_project(faber_project, database_url):
    """``make(migrations: {name: sql}, url=database_url) -> (project, env)``; run faber with ``env``."""

    def make(migrations: dict[str, str], url: str = database_url):
        environment = {"database_url_env": URL_ENV, "lock_wait_seconds": 1, "backup": {"provider": "pgdump-dir"}}
        project = faber_project(
            {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}},
            {f"migrations/{name}.sql": sql for name, sql in migrations.items()},
        )
        return project, {URL_ENV: url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}

    return make
