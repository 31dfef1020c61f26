"""faber's sessions keep their timeouts through a real PgBouncer, which refuses the ``options``
startup parameter that carries them (its default) or drops it (``ignore_startup_parameters =
options``): faber SETs them after connecting and reads them back. A pooler sharing server sessions
between clients (transaction pooling), where neither they nor faber's lock would hold, is refused."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
import pytest

from faber_core.context import Database
from faber_core.errors import ConfigError
from faber_core.secrets import Secret
from faber_core.testing.fixtures import CANARY_PASSWORD

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}


def name_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]


@pytest.fixture(params=["refused", "ignored"])
def pooled_url(request, database_url: str, pgbouncer) -> str:
    """The test database through PgBouncer in session pooling, refusing or dropping ``options``."""
    name = name_of(database_url)
    return f"{pgbouncer({name: name}, options=request.param)}/{name}"


def test_faber_s_sessions_have_their_timeouts_through_pgbouncer(pooled_url):
    database = Database(Secret(pooled_url), source="test", lock_timeout=1.5, statement_timeout=7)

    for _ in range(2):  # the first session finds out what the pooler does; the next knows
        with database.connect() as conn:
            assert conn.execute("SHOW lock_timeout").fetchone()[0] == "1500ms"
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "7s"


def test_a_deploy_through_pgbouncer_gives_its_programs_the_timeouts_as_statements(
    pooled_url, project, context_for, monkeypatch
):
    """PGOPTIONS would be refused or dropped by the pooler: a Node runner is given the SET
    statements instead (``session_timeout_statements``)."""
    monkeypatch.setenv("TEST_DATABASE_URL", pooled_url)
    context = context_for(project({}))
    with context.database.session():
        pass

    assert context.session_timeout_env() == {}
    assert any(statement.startswith("SET lock_timeout") for statement in context.session_timeout_statements())


def test_a_deploy_through_pgbouncer_backs_up_and_applies(pooled_url, project, run_faber, monkeypatch, database_url):
    monkeypatch.setenv("TEST_DATABASE_URL", pooled_url)
    project_dir = project({"001_users": "CREATE TABLE users (id int PRIMARY KEY);"})

    deployed = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=SQLFILES)

    assert deployed.returncode == 0, deployed.stdout
    assert deployed.json["result"]["backup_id"]
    assert "users" in tables(database_url)
    assert CANARY_PASSWORD not in deployed.stdout + deployed.stderr


@pytest.mark.parametrize("options", ["refused", "ignored"])
def test_transaction_pooling_is_refused_before_anything_changes(
    options, database_url, pgbouncer, project, run_faber, monkeypatch
):
    name = name_of(database_url)
    url = f"{pgbouncer({name: name}, options=options, pool_mode='transaction')}/{name}"
    with pytest.raises(ConfigError) as raised:
        Database(Secret(url), source="test").connect().close()
    assert "transaction or statement pooling" in raised.value.message
    monkeypatch.setenv("TEST_DATABASE_URL", url)
    project_dir = project({"001_users": "CREATE TABLE users (id int PRIMARY KEY);"})

    deployed = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=SQLFILES)

    assert deployed.returncode == 2, deployed.stdout
    assert deployed.json["code"] == "CONFIG_INVALID"
    assert "pool_mode = session" in " ".join(deployed.json["recovery"]["suggestions"])
    assert tables(database_url) == []
