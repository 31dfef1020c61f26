"""Core tests drive the workflow with the ``sqlfiles`` example handler, registered directly."""

from __future__ import annotations

from pathlib import Path

import pytest

from faber_core.context import RunContext, open_context
from faber_core.plugins import Plugins
from faber_core.testing import sqlfiles


@pytest.fixture
def plugins(plugin_manager) -> Plugins:
    plugin_manager.register(sqlfiles, name="sqlfiles")
    return Plugins(plugin_manager)


@pytest.fixture
def project(faber_project, database_url, monkeypatch):
    """``make(migrations: dict[name, sql], **environment_settings) -> Path`` for the `production` env."""
    monkeypatch.setenv("TEST_DATABASE_URL", database_url)

    def make(migrations: dict[str, str], **settings) -> Path:
        env = {"database_url_env": "TEST_DATABASE_URL", "lock_wait_seconds": 1, **settings}
        files = {f"migrations/{name}.sql": sql for name, sql in migrations.items()}
        return faber_project(
            {"database": {"migration_tool": sqlfiles.TOOL, "environments": {"production": env}}}, files
        )

    return make


@pytest.fixture
def context_for():
    def make(project_dir: Path, operation: str = "deploy-migrations", events: list | None = None) -> RunContext:
        listeners = [events.append] if events is not None else []
        return open_context(project_dir, "production", operation, listeners=listeners)

    return make
