"""Preflight on a real PostgreSQL: an idle-in-transaction session holding a lock on a table the
pending migration touches is found, reported with its query scrubbed, and acted on by policy."""

from __future__ import annotations

import psycopg
import pytest

from faber_core.errors import PreflightBlocked
from faber_core.safety.preflight import scrub_query
from faber_core.secrets import Redactor
from faber_core.workflow import DeployOptions, migrate

YES = DeployOptions(assume_yes=True)
ORDERS = "CREATE TABLE orders (id bigint PRIMARY KEY, customer text);\n"
ADD_STATUS = "ALTER TABLE orders ADD COLUMN status text;\n"
SECRET_LITERAL = "alice@example.com"


@pytest.fixture
def orders_project(project, context_for, plugins):
    def make(**settings):
        project_dir = project({"001_orders": ORDERS}, **settings)
        migrate(context_for(project_dir), plugins, YES)
        (project_dir / "migrations/002_status.sql").write_text(ADD_STATUS)
        return project_dir

    return make


@pytest.fixture
def idle_in_transaction(database_url):
    """``hold()``: a session that read from orders and sits idle in its transaction."""
    sessions = []

    def hold() -> psycopg.Connection:
        conn = psycopg.connect(database_url, application_name="reporting job")
        conn.execute(f"SELECT * FROM orders WHERE customer = '{SECRET_LITERAL}'")
        sessions.append(conn)
        return conn

    yield hold
    for conn in sessions:
        conn.close()


def column_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        query = "SELECT 1 FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'status'"
        return conn.execute(query).fetchone() is not None


def test_preview_reports_an_idle_in_transaction_lock_holder(orders_project, context_for, plugins, idle_in_transaction):
    project_dir = orders_project()
    holder = idle_in_transaction()

    preview = migrate(context_for(project_dir, "preview-migrations"), plugins, DeployOptions(dry_run=True))

    report = preview.model_dump(mode="json")["result"]["preflight"]
    assert report["policy"] == "warn" and report["tables"] == ["public.orders"]
    (blocker,) = report["blockers"]
    assert blocker["pid"] == holder.info.backend_pid
    assert blocker["state"] == "idle in transaction" and blocker["application_name"] == "reporting job"
    assert blocker["tables"] == ["public.orders"] and blocker["lock_modes"] == ["AccessShareLock"]
    assert blocker["blocks_migration"] is True and blocker["age_seconds"] >= 0
    assert "FROM orders WHERE customer = '…'" in blocker["query"] and SECRET_LITERAL not in blocker["query"]


def test_a_lock_holders_statement_shows_no_literal_of_any_quoting(orders_project, context_for, plugins, database_url):
    # Dollar quotes and E'' strings with a \' inside showed what they held; a literal cut where the
    # server stops keeping a statement (its first kilobyte) showed its start.
    project_dir = orders_project()
    statements = [
        f"SELECT * FROM orders WHERE customer = $${SECRET_LITERAL}$$",
        f"SELECT * FROM orders WHERE customer = $x${SECRET_LITERAL}$x$ OR customer = E'a\\'{SECRET_LITERAL}'",
        "SELECT * FROM orders WHERE customer = " + " " * 970 + f"'{SECRET_LITERAL}{'.' * 100}'",
    ]
    for statement in statements:
        with psycopg.connect(database_url) as holder:
            holder.execute(statement)

            preview = migrate(context_for(project_dir, "preview-migrations"), plugins, DeployOptions(dry_run=True))

            (blocker,) = preview.model_dump(mode="json")["result"]["preflight"]["blockers"]
            assert blocker["query"].startswith("SELECT * FROM orders WHERE customer = '…'"), blocker["query"]
            assert "alice" not in blocker["query"], blocker["query"]


def test_a_mysql_statements_double_quoted_strings_are_literals_too():
    statement = f"""SELECT * FROM orders WHERE customer = "{SECRET_LITERAL}" OR note = 'it\\'s {SECRET_LITERAL}'"""

    scrubbed = scrub_query(statement, Redactor(), mysql=True)

    assert scrubbed == "SELECT * FROM orders WHERE customer = '…' OR note = '…'"


def test_abort_applies_nothing_and_takes_no_backup(
    orders_project, context_for, plugins, database_url, idle_in_transaction
):
    project_dir = orders_project(preflight="abort")
    holder = idle_in_transaction()
    backups_before = set((project_dir / ".faber/backups/production").glob("*.dump"))

    with pytest.raises(PreflightBlocked) as raised:
        migrate(context_for(project_dir), plugins, YES)

    report = raised.value.result["preflight"]
    assert [b["pid"] for b in report["blockers"]] == [holder.info.backend_pid]
    assert report["tables"] == ["public.orders"] and report["policy"] == "abort"
    assert f"If a session is stuck, end it: SELECT pg_terminate_backend({holder.info.backend_pid})" in (
        raised.value.suggestions
    )
    assert not column_exists(database_url)
    assert set((project_dir / ".faber/backups/production").glob("*.dump")) == backups_before


def test_wait_proceeds_once_the_blocker_finishes(
    orders_project, context_for, plugins, database_url, idle_in_transaction
):
    project_dir = orders_project(preflight="wait", preflight_wait_seconds=60)
    holder = idle_in_transaction()
    events: list = []
    context = context_for(project_dir, events=events)
    context.listeners.append(lambda event: event.kind == "preflight.waiting" and holder.rollback())

    result = migrate(context, plugins, YES).model_dump(mode="json")["result"]

    assert "preflight.waiting" in [e.kind for e in events]
    assert result["migrations_applied"] == 1 and result["preflight"]["blockers"] == []
    assert column_exists(database_url)


def test_wait_gives_up_after_its_bound(orders_project, context_for, plugins, database_url, idle_in_transaction):
    project_dir = orders_project(preflight="wait", preflight_wait_seconds=0.5)
    idle_in_transaction()

    with pytest.raises(PreflightBlocked) as raised:
        migrate(context_for(project_dir), plugins, YES)

    assert "after waiting" in raised.value.message
    assert not column_exists(database_url)


def test_a_session_on_another_table_does_not_block(orders_project, context_for, plugins, database_url):
    project_dir = orders_project(preflight="abort")
    with psycopg.connect(database_url) as other:
        other.execute("CREATE TABLE audit_log (id int)")
        other.commit()
        other.execute("SELECT * FROM audit_log")

        result = migrate(context_for(project_dir), plugins, YES).model_dump(mode="json")["result"]

    assert result["migrations_applied"] == 1 and result["preflight"]["blockers"] == []


def test_the_lock_holder_named_is_the_one_in_this_database(database_url, postgres_admin_url):
    from faber_core.postgres.locks import lock_holder

    key = 4242_4242_4242
    with (
        psycopg.connect(postgres_admin_url, autocommit=True, application_name="elsewhere") as elsewhere,
        psycopg.connect(database_url, autocommit=True, application_name="right here") as here,
        psycopg.connect(database_url, autocommit=True) as asking,
    ):
        elsewhere.execute("SELECT pg_advisory_lock(%s)", [key])
        here.execute("SELECT pg_advisory_lock(%s)", [key])

        assert lock_holder(asking, key).startswith(f"right here (server pid {here.info.backend_pid},")
        here.execute("SELECT pg_advisory_unlock(%s)", [key])
        assert lock_holder(asking, key) == "another session (it may have just finished)"
