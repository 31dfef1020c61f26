"""Fixtures for the Prisma handler: a project with Prisma migration folders and a context on it."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
from faber_core.plugins import Plugins
from faber_core.testing.fixtures import install_node_project

from faber_prisma import plugin

PRISMA_CLI_FIXTURE = Path(__file__).parent / "fixtures" / "prisma-cli"
RECIPE_FILES = ("package.json", "prisma.config.ts", "unref-wasm-timers.cjs", "prisma/schema.prisma")
ENVIRONMENT = "staging"
URL_ENV = "PRISMA_TEST_DATABASE_URL"


@pytest.fixture
def prisma_plugins(plugin_manager) -> Plugins:
    plugin_manager.register(plugin, name="faber_prisma")
    return Plugins(plugin_manager)


@pytest.fixture
def prisma_project(faber_project, database_url, monkeypatch):
    """``make(migrations: {name: sql}, url=None, url_suffix="", prisma_options=None, **settings) -> Path``.

    Writes ``prisma/migrations/<name>/migration.sql`` and a config whose `staging` environment
    reads the test database URL, or ``url`` (plus ``url_suffix``, e.g. ``?schema=app``).
    """

    def make(
        migrations: dict[str, str],
        *,
        url: str | None = None,
        url_suffix: str = "",
        prisma_options: dict | None = None,
        **settings,
    ) -> Path:
        monkeypatch.setenv(URL_ENV, (url or database_url) + url_suffix)
        environment = {"database_url_env": URL_ENV, "lock_wait_seconds": 1, "backup_before_migrate": False, **settings}
        config = {"database": {"migration_tool": "prisma", "environments": {ENVIRONMENT: environment}}}
        if prisma_options is not None:
            config["database"]["prisma"] = prisma_options
        directory = (prisma_options or {}).get("migrations_dir", "prisma/migrations")
        files = {f"{directory}/{name}/migration.sql": sql for name, sql in migrations.items()}
        return faber_project(config, files)

    return make


@pytest.fixture
def mysql_prisma_project(faber_project, mysql_database_url, monkeypatch):
    """``make(migrations: {name: sql}, **settings) -> Path``: as ``prisma_project``, on the test's
    own MySQL/MariaDB database (reached as a user whose password is the canary).

    Prisma's lock on MySQL is one for the whole server, so tests running in parallel on other
    databases take turns on it: runs wait up to 60 s for it unless a test says otherwise.
    """

    def make(migrations: dict[str, str], **settings) -> Path:
        monkeypatch.setenv(URL_ENV, mysql_database_url)
        environment = {"database_url_env": URL_ENV, "lock_wait_seconds": 60, "backup_before_migrate": False, **settings}
        config = {"database": {"migration_tool": "prisma", "environments": {ENVIRONMENT: environment}}}
        files = {f"prisma/migrations/{name}/migration.sql": sql for name, sql in migrations.items()}
        return faber_project(config, files)

    return make


@pytest.fixture
def prisma_context(run_context):
    """``make(project_dir, events=None, environment=ENVIRONMENT)``: a run context on a project."""
    return functools.partial(run_context, environment=ENVIRONMENT)


@pytest.fixture
def add_migration():
    """``add(project_dir, name, sql) -> Path``: write one more migration folder."""

    def add(project_dir: Path, name: str, sql: str, directory: str = "prisma/migrations") -> Path:
        path = project_dir / directory / name / "migration.sql"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sql)
        return path

    return add


@pytest.fixture(scope="session")
def prisma_cli() -> Path:
    """The fixture Node project with its locked dependencies installed (``npm ci`` once)."""
    install_node_project(PRISMA_CLI_FIXTURE, "node_modules/.bin/prisma")
    return PRISMA_CLI_FIXTURE


@pytest.fixture
def interop_project(prisma_project, prisma_cli):
    """A faber project that is also a Prisma project using the fixture's CLI."""

    def make(migrations: dict[str, str], **kwargs) -> Path:
        project = prisma_project(migrations, **kwargs)
        for name in RECIPE_FILES:
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(prisma_cli / name, project / name)
        (project / "node_modules").symlink_to(prisma_cli / "node_modules", target_is_directory=True)
        return project

    return make
