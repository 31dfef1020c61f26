"""lock_timeout and retry on a real PostgreSQL: a migration blocked by another session's lock gives
up quickly (so writers are not queued behind it), is retried, and succeeds once the lock is gone."""

from __future__ import annotations

import os
import subprocess
import threading

import psycopg
import pytest

from faber_core.errors import MigrationFailed
from faber_core.models import AppliedMigration, ApplyOutcome, LocalMigration, MigrationFailure
from faber_core.safety.timeouts import apply_with_lock_retry
from faber_core.workflow import DeployOptions, migrate

YES = DeployOptions(assume_yes=True)
ITEMS = "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, label text);\n"
ADD_NOTE = "ALTER TABLE items ADD COLUMN note text;\n"
FAST_RETRY = {"lock_timeout_seconds": 0.3, "lock_retry": {"retries": 8, "backoff_seconds": 0.2}}


class Writer(threading.Thread):
    """Inserts into ``items`` in a loop, as live traffic would, counting completed inserts."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.completed = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                try:
                    conn.execute("INSERT INTO items (label) VALUES ('live')")
                    self.completed += 1
                except psycopg.Error as exc:
                    self.errors.append(str(exc))


@pytest.fixture
def items_project(project, context_for, plugins, database_url):
    def make(second: str, **settings):
        project_dir = project({"001_items": ITEMS}, **settings)
        migrate(context_for(project_dir), plugins, YES)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO items (label) SELECT 'seed' FROM generate_series(1, 1000)")
        (project_dir / "migrations/002_note.sql").write_text(second)
        return project_dir

    return make


def test_blocked_migration_times_out_retries_and_succeeds_while_inserts_keep_completing(
    items_project, context_for, plugins, database_url
):
    project_dir = items_project(ADD_NOTE, **FAST_RETRY)
    blocker = psycopg.connect(database_url)
    blocker.execute("SELECT count(*) FROM items")  # idle in transaction, holding ACCESS SHARE on items
    writer = Writer(database_url)
    writer.start()
    progress: dict[str, int] = {}

    def on_event(event) -> None:
        if event.kind != "migration.retry":
            return
        progress.setdefault("first_retry", writer.completed)
        if event.data["attempt"] == 3:
            progress["released"] = writer.completed
            blocker.rollback()

    events: list = []
    context = context_for(project_dir, events=events)
    context.listeners.append(on_event)
    try:
        result = migrate(context, plugins, YES).model_dump(mode="json")["result"]
    finally:
        writer.stop.set()
        writer.join()
        blocker.close()

    retries = [e.data for e in events if e.kind == "migration.retry"]
    assert [r["attempt"] for r in retries] == [2, 3]
    assert all(r["name"] == "002_note" and "lock timeout" in r["error"] for r in retries)
    assert result["migrations_applied"] == 1 and result["migrations"][0]["name"] == "002_note"
    blockers = result["preflight"]["blockers"]
    assert blockers and blockers[0]["state"] == "idle in transaction" and blockers[0]["tables"] == ["public.items"]
    assert writer.errors == []
    assert progress["released"] > progress["first_retry"], "inserts stalled while the migration was retrying"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE column_name = 'note'").fetchone()[0]


def test_gives_up_after_the_configured_retries(items_project, context_for, plugins, database_url):
    project_dir = items_project(ADD_NOTE, lock_timeout_seconds=0.2, lock_retry={"retries": 2, "backoff_seconds": 0})
    events: list = []
    with psycopg.connect(database_url) as blocker:
        blocker.execute("SELECT count(*) FROM items")
        with pytest.raises(MigrationFailed) as raised:
            migrate(context_for(project_dir, events=events), plugins, YES)

    assert "lock timeout" in raised.value.message
    assert raised.value.result["rollback_status"] == "not_needed"
    assert [e.data["attempt"] for e in events if e.kind == "migration.retry"] == [2, 3]


def test_a_non_transactional_migration_is_never_retried(items_project, context_for):
    context = context_for(items_project(ADD_NOTE))
    events: list = []
    context.listeners.append(events.append)
    calls: list[list[str]] = []
    pending = [LocalMigration(name="002_index"), LocalMigration(name="003_more")]

    def apply(remaining: list[LocalMigration]) -> ApplyOutcome:
        calls.append([m.name for m in remaining])
        failure = MigrationFailure(
            name="002_index", error="canceling statement due to lock timeout", transaction_rolled_back=False
        )
        return ApplyOutcome(applied=[], failure=failure)

    outcome = apply_with_lock_retry(context, apply, pending, sleep=lambda seconds: None)

    assert calls == [["002_index", "003_more"]] and outcome.failure.name == "002_index"
    assert [e.kind for e in events] == ["migration.retry_refused"]


def test_a_retry_continues_after_the_migrations_already_committed(items_project, context_for):
    context = context_for(items_project(ADD_NOTE))
    calls: list[list[str]] = []
    pending = [LocalMigration(name=name) for name in ("002", "003", "004")]

    def apply(remaining: list[LocalMigration]) -> ApplyOutcome:
        calls.append([m.name for m in remaining])
        if len(calls) == 1:
            failure = MigrationFailure(name="003", error="x", transaction_rolled_back=True, sqlstate="55P03")
            return ApplyOutcome(applied=[AppliedMigration(name="002", duration_seconds=0.1)], failure=failure)
        return ApplyOutcome(applied=[AppliedMigration(name=m.name, duration_seconds=0.1) for m in remaining])

    outcome = apply_with_lock_retry(context, apply, pending, sleep=lambda seconds: None)

    assert calls == [["002", "003", "004"], ["003", "004"]]
    assert [m.name for m in outcome.applied] == ["002", "003", "004"] and outcome.failure is None


def test_subprocess_tools_get_the_timeouts_through_pgoptions(items_project, context_for, database_url):
    context = context_for(items_project(ADD_NOTE, lock_timeout_seconds=1.5, statement_timeout_seconds=60))
    env = {**os.environ, **context.database.client_env(), **context.session_timeout_env()}

    shown = subprocess.run(
        ["psql", "-XAtc", "SHOW lock_timeout; SHOW statement_timeout"], env=env, capture_output=True, text=True
    )

    assert shown.stdout.split() == ["1500ms", "1min"], shown.stderr


def test_psycopg_sessions_get_the_timeouts(items_project, context_for):
    context = context_for(items_project(ADD_NOTE))
    with context.database.connect(migration_session=True) as conn:
        context.apply_session_timeouts(conn)
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "500ms"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"


def test_protected_defaults_bound_the_stall_and_retry_with_jittered_backoff():
    from faber_core.config import EnvironmentSettings
    from faber_core.safety.timeouts import backoff_seconds

    settings = EnvironmentSettings().resolved("production")
    assert settings.lock_timeout_seconds == 0.5

    lowest = [backoff_seconds(settings, retry, jitter=lambda: 0.0) for retry in range(1, 12)]
    highest = [backoff_seconds(settings, retry, jitter=lambda: 1.0) for retry in range(1, 12)]
    assert highest[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0] and highest[-1] == 10.0
    assert lowest == [wait / 2 for wait in highest]
    some = {backoff_seconds(settings, 3) for _ in range(20)}
    assert len(some) > 1 and all(1.0 <= wait <= 2.0 for wait in some)
    # The shortest the default retries wait in total: a blocker shorter than this ends before faber gives up.
    patience = sum(lowest[: settings.lock_retry.retries]) + settings.lock_timeout_seconds * settings.lock_retry.retries
    assert patience > 30


# A migration that clears the session's settings clears them for itself only ----------------

RECORD_SETTINGS = (
    "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout,"
    " current_setting('statement_timeout') AS statement_timeout;"
)
TIMEOUTS = {"lock_timeout_seconds": 3, "statement_timeout_seconds": 60}


@pytest.mark.parametrize(
    "clearing", ["RESET ALL;", "SET lock_timeout = 0; SET statement_timeout = 0;"], ids=["reset-all", "set-zero"]
)
def test_the_migrations_after_one_that_clears_the_session_settings_still_run_under_faber_s_timeouts(
    project, context_for, plugins, database_url, clearing
):
    project_dir = project({"001_clears": clearing, "002_records": RECORD_SETTINGS}, **TIMEOUTS)

    result = migrate(context_for(project_dir), plugins, YES).model_dump(mode="json")["result"]

    assert result["migrations_applied"] == 2
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT lock_timeout, statement_timeout FROM seen").fetchall() == [("3s", "1min")]
