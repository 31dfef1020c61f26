"""Core tests drive the workflow with the ``sqlfiles`` example handler, registered directly."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from faber_core.context import RunContext, open_context
from faber_core.plugins import Plugins
from faber_core.testing import sqlfiles
from faber_core.testing.fixtures import free_port, wait_for


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


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found is None:
        pytest.skip(
            "PgBouncer is not installed (apt-get install pgbouncer): the tests of a database reached through a "
            "connection pooler need it"
        )
    return found


@pytest.fixture
def pgbouncer(database_url: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``start(databases, *, options="ignored", pool_mode="session") -> str``: a PgBouncer of the
    test's own before the test's PostgreSQL server, and the URL of it naming no database.

    ``databases``: PgBouncer's name of each database it serves, to the server's name of it (``*``
    for the fallback entry, which passes any other name through). ``options``: what it does with
    the ``options`` startup parameter, which carries faber's session timeouts: ``ignored``
    (``ignore_startup_parameters = options``) or ``refused`` (PgBouncer's default). Its console
    (database ``pgbouncer``) takes ``postgres``'s commands (``SET pool_mode = ...``)."""
    binary = pgbouncer_binary()
    server = urlsplit(database_url)
    started: list[subprocess.Popen] = []

    def start(databases: dict[str, str | None], *, options: str = "ignored", pool_mode: str = "session") -> str:
        home = tmp_path / f"pgbouncer-{len(started)}"
        home.mkdir()
        port = free_port()
        (home / "users.txt").write_text('"postgres" ""\n')
        entries = "".join(
            f"{alias} = host={server.hostname} port={server.port or 5432}" + (f" dbname={name}\n" if name else "\n")
            for alias, name in databases.items()
        )
        ignored = "ignore_startup_parameters = options\n" if options == "ignored" else ""
        config = home / "pgbouncer.ini"
        config.write_text(
            f"[databases]\n{entries}"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
            f"auth_file = {home / 'users.txt'}\nadmin_users = postgres\npool_mode = {pool_mode}\nlogfile =\npidfile =\n"
            f"{ignored}"
        )
        # PgBouncer refuses to run as root; it reads its configuration before it takes the user's identity.
        as_user = ["-u", "nobody"] if os.geteuid() == 0 else []
        log = home / "pgbouncer.log"
        with log.open("wb") as output:
            bouncer = subprocess.Popen([binary, *as_user, str(config)], stdout=output, stderr=subprocess.STDOUT)
        started.append(bouncer)
        url = f"postgresql://postgres@127.0.0.1:{port}"
        probe = f"{url}/{next(iter(databases))}"

        def answers() -> bool:
            assert bouncer.poll() is None, log.read_text()
            try:
                with psycopg.connect(probe, connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                return False

        wait_for(answers, "PgBouncer to accept connections", timeout=30)
        return url

    try:
        yield start
    finally:
        for bouncer in started:
            bouncer.terminate()
            bouncer.wait(timeout=30)


@pytest.fixture
def pgbouncer_alias(database_url: str, pgbouncer) -> str:
    """A URL reaching the test's database through a PgBouncer alias of another name (session
    pooling, as faber's session lock needs)."""
    name = urlsplit(database_url).path.lstrip("/")
    return f"{pgbouncer({f'{name}_alias': name})}/{name}_alias"
