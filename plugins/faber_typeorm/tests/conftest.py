"""Fixtures for the TypeORM handler: the fixture Node project installed once, copies of it per test."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from faber_core.plugins import Plugins
from faber_core.testing.fixtures import install_node_project

from faber_typeorm import plugin

FIXTURE = Path(__file__).parent / "fixtures" / "typeorm-project"
ENVIRONMENT = "staging"
URL_ENV = "TYPEORM_TEST_DATABASE_URL"


def migration_source(class_name: str, *statements: str, transaction: bool | None = None) -> str:
    """A JavaScript TypeORM migration class running ``statements`` in order."""
    body = "\n".join(f"    await queryRunner.query({json.dumps(sql)});" for sql in statements)
    flag = f"\n  transaction = {json.dumps(transaction)};\n" if transaction is not None else ""
    return (
        f"module.exports = class {class_name} {{{flag}\n  async up(queryRunner) {{\n{body}\n  }}\n\n"
        "  async down() {}\n};\n"
    )


@pytest.fixture
def typeorm_migration():
    """``typeorm_migration(class_name, *statements, transaction=None) -> str``: a migration's source."""
    return migration_source


@pytest.fixture(scope="session")
def typeorm_node_modules() -> Path:
    """The fixture project's locked dependencies, installed with ``npm ci`` once."""
    return install_node_project(FIXTURE, "node_modules/mysql2/package.json")


@pytest.fixture
def typeorm_plugins(plugin_manager) -> Plugins:
    plugin_manager.register(plugin.handler, name="faber_typeorm")
    return Plugins(plugin_manager)


def project_maker(faber_project, monkeypatch, node_modules_dir: Path, url: str, data_source: str):
    """``make(migrations=None, files=None, node_modules=True, typeorm=None, fixture_migrations=True, **settings)``.

    A copy of the fixture project (``data_source`` as its data source, its migrations,
    ``node_modules`` linked) plus ``migrations`` ({file name: source}) and ``files``; ``staging``
    reads ``url``.
    """

    def make(
        migrations: dict[str, str] | None = None,
        *,
        files: dict[str, str] | None = None,
        node_modules: bool = True,
        typeorm: dict | None = None,
        fixture_migrations: bool = True,
        **settings,
    ) -> Path:
        monkeypatch.setenv(URL_ENV, url)
        environment = {"database_url_env": URL_ENV, "lock_wait_seconds": 1, "backup_before_migrate": False, **settings}
        config = {
            "database": {
                "migration_tool": "typeorm",
                "typeorm": typeorm or {"data_source": "data-source.js"},
                "environments": {ENVIRONMENT: environment},
            }
        }
        sources = {"data-source.js": data_source, "package.json": (FIXTURE / "package.json").read_text()}
        if fixture_migrations:
            sources |= {f"migrations/{p.name}": p.read_text() for p in (FIXTURE / "migrations").glob("*.js")}
        sources |= {f"migrations/{name}": source for name, source in (migrations or {}).items()}
        project = faber_project(config, sources | (files or {}))
        if node_modules and not (project / "node_modules").exists():
            (project / "node_modules").symlink_to(node_modules_dir, target_is_directory=True)
        return project

    return make


@pytest.fixture
def typeorm_project(faber_project, database_url, monkeypatch, typeorm_node_modules):
    """The fixture project on the test's PostgreSQL database (see :func:`project_maker`)."""
    data_source = (FIXTURE / "data-source.js").read_text()
    return project_maker(faber_project, monkeypatch, typeorm_node_modules, database_url, data_source)


@pytest.fixture
def mysql_typeorm_project(faber_project, mysql_database_url, monkeypatch, typeorm_node_modules):
    """The fixture project with a MySQL DataSource, on the test's MySQL/MariaDB database; its
    own migrations are PostgreSQL's, so tests pass ``fixture_migrations=False`` and their own."""
    data_source = (FIXTURE / "data-source.js").read_text().replace('type: "postgres"', 'type: "mysql"')
    return project_maker(faber_project, monkeypatch, typeorm_node_modules, mysql_database_url, data_source)


@pytest.fixture
def typeorm_context(run_context):
    """``make(project_dir, events=None, environment=ENVIRONMENT)``: a run context on a project."""
    return functools.partial(run_context, environment=ENVIRONMENT)
