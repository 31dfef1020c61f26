"""What the record of migrations run outside a transaction costs a run that has none."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg

from faber_core.audit import unfinished
from faber_core.context import Database
from faber_core.models import LocalMigration
from faber_core.secrets import Secret


def test_a_run_that_recorded_nothing_asks_the_database_nothing_when_it_ends(database_url, monkeypatch):
    database = Database(Secret(database_url), source="test", lock_timeout=1.5, statement_timeout=7)
    connections = []
    connect = psycopg.connect
    monkeypatch.setattr(
        psycopg, "connect", lambda *args, **kwargs: connections.append(args) or connect(*args, **kwargs)
    )

    unfinished.forget_run(SimpleNamespace(database=database, environment="production", run_id="run-1"))

    assert connections == []


def _context(database_url: str, run_id: str) -> SimpleNamespace:
    database = Database(Secret(database_url), source="test", lock_timeout=1.5, statement_timeout=7)
    config = SimpleNamespace(database=SimpleNamespace(faber_schema="faber"))
    return SimpleNamespace(database=database, environment="production", run_id=run_id, config=config)


def _killed_run_recorded(database_url: str, migration: str) -> None:
    """A run that recorded ``migration`` (outside a transaction) under its lock, then was killed:
    its lock session has ended, and its run lock with it."""
    killed = _context(database_url, "killed-run")
    with psycopg.connect(database_url, autocommit=True) as lock_conn:
        unfinished.record(killed, lock_conn, [LocalMigration(name=migration)], {migration}, None)
    unfinished.apply_ended(killed)
    killed.database.close_session()


def _looks_for_the_table(context: SimpleNamespace) -> list[str]:
    """The left migrations a status read finds, counting its looks for the record's table."""
    looks = []
    with context.database.session() as conn:
        execute = conn.execute

        def counted(query, *args, **kwargs):
            if "pg_tables" in query:
                looks.append(query)
            return execute(query, *args, **kwargs)

        conn.execute = counted
        try:
            found = [item.migration for item in unfinished.left_by_killed_runs(context, conn, set())]
        finally:
            del conn.execute
    return [*found, *(["looked"] * len(looks))]


def test_reads_under_the_lock_look_for_the_record_once_the_first_under_it_looked(database_url):
    context = _context(database_url, "this-run")
    assert _looks_for_the_table(context) == ["looked"]  # before the lock: no table
    # A run killed while it held faber's lock, before this one took it, made the table meanwhile:
    # the first read under the lock still looks, and finds it.
    _killed_run_recorded(database_url, "0002_outside")
    with unfinished.reads_under_lock(context, None):
        assert _looks_for_the_table(context) == ["0002_outside", "looked"]
        assert _looks_for_the_table(context) == ["0002_outside"]
    assert _looks_for_the_table(context) == ["0002_outside", "looked"]  # the lock let go: looks again


def test_a_run_that_makes_the_record_under_the_lock_reads_it_there(database_url):
    context = _context(database_url, "this-run")
    with unfinished.reads_under_lock(context, None):
        assert _looks_for_the_table(context) == ["looked"]  # no table: not looked for again
        assert _looks_for_the_table(context) == []
        with psycopg.connect(database_url, autocommit=True) as lock_conn:
            unfinished.record(context, lock_conn, [LocalMigration(name="0003_outside")], {"0003_outside"}, None)
        # The table this run made is read: its rows, not this run's, would be named.
        _killed_run_recorded(database_url, "0004_outside")
        assert _looks_for_the_table(context) == ["0004_outside"]
        unfinished.apply_ended(context)
