"""Migration sessions outlive faber by seconds at most: a killed faber's long statement is ended by
the server (``client_connection_check_interval``), so its ACCESS EXCLUSIVE lock does not keep
blocking the application."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg

from faber_core.safety.timeouts import CONNECTION_CHECK_INTERVAL_MS

ACCOUNTS = "CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, owner text);\n"
SLOW_ALTER = "ALTER TABLE accounts ADD COLUMN z int;\nSELECT pg_sleep(20);\n"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sleeping_migration(url: str) -> int | None:
    """The pid of faber's session running the slow migration, once it holds its lock."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
            " AND query LIKE '%pg_sleep(20)%' AND pid <> pg_backend_pid()"
        ).fetchone()
    return row[0] if row else None


def test_sigkill_during_a_long_migration_frees_the_table_within_seconds(project, context_for, plugins, database_url):
    from faber_core.workflow import DeployOptions, migrate

    project_dir = project({"001_accounts": ACCOUNTS})
    migrate(context_for(project_dir), plugins, DeployOptions(assume_yes=True))
    (project_dir / "migrations/002_slow.sql").write_text(SLOW_ALTER)
    env = {**os.environ, "FABER_PLUGINS": "faber_core.testing.sqlfiles", "TEST_DATABASE_URL": database_url}
    faber = subprocess.Popen(
        [sys.executable, "-m", "faber_core", "migrate", "production", "--yes", "--json", "--cwd", str(project_dir)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        backend = wait_for(lambda: sleeping_migration(database_url), 60, "the slow migration to start")
    finally:
        faber.send_signal(signal.SIGKILL)
        faber.wait()
    killed_at = time.monotonic()

    with psycopg.connect(database_url, autocommit=True) as reader:
        reader.execute("SET lock_timeout = '200ms'")

        def readable() -> bool:
            try:
                reader.execute("SELECT count(*) FROM accounts").fetchone()
            except psycopg.errors.LockNotAvailable:
                return False
            return True

        wait_for(readable, 15, "accounts to be readable again")
        waited = time.monotonic() - killed_at

        def session_gone() -> bool:
            return reader.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [backend]).fetchone()[0] == 0

        # The backend frees its locks while it aborts, a moment before it leaves pg_stat_activity.
        wait_for(session_gone, 2, "the killed run's session to end")
        column = reader.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'z'"
        ).fetchone()[0]

    assert waited < CONNECTION_CHECK_INTERVAL_MS / 1000 + 3, f"accounts stayed locked {waited:.1f}s after the kill"
    assert column == 0, "the migration's transaction must have rolled back"


def test_subprocess_tools_get_the_connection_check_through_pgoptions(project, context_for):
    context = context_for(project({"001_accounts": ACCOUNTS}))
    env = {**os.environ, **context.database.client_env(), **context.session_timeout_env()}

    shown = subprocess.run(
        ["psql", "-XAtc", "SHOW client_connection_check_interval"], env=env, capture_output=True, text=True
    )

    assert shown.stdout.strip() == f"{CONNECTION_CHECK_INTERVAL_MS // 1000}s", shown.stderr


def test_psycopg_migration_sessions_get_the_connection_check(project, context_for):
    context = context_for(project({"001_accounts": ACCOUNTS}, statement_timeout_seconds=90))
    with context.database.connect() as conn:
        context.apply_session_timeouts(conn)
        assert conn.execute("SHOW client_connection_check_interval").fetchone()[0] == "2s"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "90s"
