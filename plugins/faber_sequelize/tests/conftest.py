"""Fixtures for the Sequelize handler: the fixture Node project installed once, copies of it per test."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from faber_core.plugins import Plugins
from faber_core.testing.fixtures import install_node_project

from faber_sequelize import plugin

FIXTURE = Path(__file__).parent / "fixtures" / "sequelize-project"
PROJECT_FILES = (".sequelizerc", "package.json", "db/config.json")
ENVIRONMENT = "staging"
URL_ENV = "SEQUELIZE_TEST_DATABASE_URL"


def migration_source(*statements: str) -> str:
    """A JavaScript sequelize-cli migration running ``statements`` in order through the QueryInterface."""
    body = "\n".join(f"    await queryInterface.sequelize.query({json.dumps(sql)});" for sql in statements)
    return (
        '"use strict";\n\nmodule.exports = {\n  async up(queryInterface) {\n'
        f"{body}\n  }},\n\n  async down() {{}},\n}};\n"
    )


@pytest.fixture
def sequelize_migration():
    """``sequelize_migration(*statements) -> str``: a migration file's source."""
    return migration_source


@pytest.fixture(scope="session")
def sequelize_node_modules() -> Path:
    """The fixture project's locked dependencies, installed with ``npm ci`` once."""
    # sequelize-cli came last: a project installed before it is installed again.
    return install_node_project(FIXTURE, "node_modules/sequelize-cli/package.json")


@pytest.fixture
def sequelize_plugins(plugin_manager) -> Plugins:
    plugin_manager.register(plugin.handler, name="faber_sequelize")
    return Plugins(plugin_manager)


def project_maker(faber_project, monkeypatch, node_modules_dir: Path, url: str, dialect: str):
    """``make(migrations=None, files=None, node_modules=True, sequelize=None, fixture_migrations=True, **settings)``.

    A copy of the fixture project (.sequelizerc, db/config.json with ``dialect``, db/migrations,
    ``node_modules`` linked) plus ``migrations`` ({file name: source}) and ``files``; ``staging``
    reads ``url``.
    """

    def make(
        migrations: dict[str, str] | None = None,
        *,
        files: dict[str, str] | None = None,
        node_modules: bool = True,
        sequelize: dict | None = None,
        fixture_migrations: bool = True,
        **settings,
    ) -> Path:
        monkeypatch.setenv(URL_ENV, url)
        environment = {"database_url_env": URL_ENV, "lock_wait_seconds": 1, "backup_before_migrate": False, **settings}
        database = {"migration_tool": "sequelize", "environments": {ENVIRONMENT: environment}}
        if sequelize is not None:
            database["sequelize"] = sequelize
        sources = {name: (FIXTURE / name).read_text() for name in PROJECT_FILES}
        sources["db/config.json"] = sources["db/config.json"].replace('"postgres"', json.dumps(dialect))
        if fixture_migrations:
            sources |= {f"db/migrations/{p.name}": p.read_text() for p in (FIXTURE / "db/migrations").glob("*.js")}
        sources |= {f"db/migrations/{name}": source for name, source in (migrations or {}).items()}
        project = faber_project({"database": database}, sources | (files or {}))
        if node_modules and not (project / "node_modules").exists():
            (project / "node_modules").symlink_to(node_modules_dir, target_is_directory=True)
        return project

    return make


@pytest.fixture
def sequelize_project(faber_project, database_url, monkeypatch, sequelize_node_modules):
    """The fixture project on the test's PostgreSQL database (see :func:`project_maker`)."""
    return project_maker(faber_project, monkeypatch, sequelize_node_modules, database_url, "postgres")


@pytest.fixture
def mysql_sequelize_project(faber_project, mysql_database_url, monkeypatch, sequelize_node_modules):
    """The fixture project with the ``mysql`` dialect (mysql2), on the test's MySQL/MariaDB database."""
    return project_maker(faber_project, monkeypatch, sequelize_node_modules, mysql_database_url, "mysql")


@pytest.fixture
def sequelize_context(run_context):
    """``make(project_dir, events=None, environment=ENVIRONMENT)``: a run context on a project."""
    return functools.partial(run_context, environment=ENVIRONMENT)
