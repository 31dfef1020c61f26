"""What the record of migrations run outside a transaction costs a run that has none."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg

from faber_core.audit import unfinished
from faber_core.context import Database
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
