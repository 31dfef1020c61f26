"""A project whose `production` environment deploys plain SQL migrations from ``sql/`` to the
test's own database. faber's pytest kit is loaded by pyproject.toml (``-p faber_core.testing.fixtures``)."""

from __future__ import annotations

import pytest

URL_ENV = "PLAINSQL_DATABASE_URL"


@pytest.fixture
def plainsql_project(faber_project, database_url):
    """``make(files: {file name: sql}, environment="production", **its settings) -> (project, env)``."""

    def make(files: dict[str, str], environment: str = "production", **settings):
        settings = {"database_url_env": URL_ENV, "lock_wait_seconds": 1, **settings}
        project = faber_project(
            {"database": {"migration_tool": "plainsql", "environments": {environment: settings}}},
            {f"sql/{name}": sql for name, sql in files.items()},
        )
        return project, {URL_ENV: database_url}

    return make
