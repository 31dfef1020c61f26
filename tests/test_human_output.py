"""What people read: every kind of result document, rendered for humans, shows no Python repr.

The documents come from real runs through ``faber_core.api`` (the ``sqlfiles`` handler, a real
PostgreSQL); a hypothesis test feeds the generic renderer arbitrary JSON results.
"""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import faber_core.plugins
from faber_core import api, hookimpl
from faber_core.errors import FaberError
from faber_core.models import MigrationRecord, MigrationState
from faber_core.render import render_human
from faber_core.results import ErrorDocument, Success
from faber_core.secrets import Redactor
from faber_core.testing import sqlfiles

USERS = "CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);"
INDEX = "CREATE INDEX users_email_idx ON users (email);\n-- a second line of SQL\nSELECT 1;"
POSTS = "CREATE TABLE posts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);"
BROKEN = "ALTER TABLE users ADD COLUMN email text;"
REPRS = re.compile(r"\bNone\b|\bTrue\b|\bFalse\b|\['|\{'")


def human(document: Success | ErrorDocument) -> str:
    text = render_human(document, Redactor())
    assert not REPRS.search(text), f"{document.operation}: Python repr in\n{text}"
    return text


@pytest.fixture
def faber(plugin_manager, monkeypatch, faber_project, database_url):
    """A `production` project on the sqlfiles handler; ``faber.write(name, sql)`` adds a migration."""
    plugin_manager.register(sqlfiles, name="sqlfiles")
    monkeypatch.setattr(faber_core.plugins, "get_plugin_manager", lambda: plugin_manager)
    monkeypatch.setenv("APP_DATABASE_URL", database_url)
    monkeypatch.setenv("DOWN_DATABASE_URL", "postgresql://app:pw-secret@127.0.0.1:1/app")
    environments = {
        "production": {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1, "lint": "warn"},
        "down": {"database_url_env": "DOWN_DATABASE_URL", "connect_timeout_seconds": 1},
    }
    project = faber_project({"database": {"migration_tool": sqlfiles.TOOL, "environments": environments}})

    class Faber:
        directory = project
        plugins = plugin_manager

        @staticmethod
        def write(name: str, sql: str) -> None:
            (project / "migrations").mkdir(exist_ok=True)
            (project / "migrations" / f"{name}.sql").write_text(sql)

        @staticmethod
        def remove(name: str) -> None:
            (project / "migrations" / f"{name}.sql").unlink()

    monkeypatch.chdir(project)
    return Faber


def test_every_result_renders_without_python_reprs(faber, tmp_path):
    faber.write("001_users", USERS)
    faber.write("002_idx", INDEX)
    preview = api.deploy("production", dry_run=True)
    deployed = api.deploy("production", yes=True)
    nothing = api.deploy("production", yes=True)
    nothing_to_preview = api.deploy("production", dry_run=True)
    backup = api.backup("production", reason="before release")
    listed = api.backups("production")
    documents = {
        "preview": preview,
        "deployed": deployed,
        "no pending": nothing,
        "nothing to preview": nothing_to_preview,
        "status": api.status("production"),
        "health": api.health("production"),
        "backup": backup,
        "backups": listed,
        "history": api.history("production"),
        "rollback": api.rollback("production", to=backup.result["id"], yes=True),
        "rollback without a terminal": api.rollback("production", to=backup.result["id"]),
        "resolve": api.resolve("production", rolled_back="002_idx"),
        "plugins": api.plugins(),
        "init": api.init(working_directory=tmp_path / "new"),
        "unknown environment": api.status("qa"),
        "unreachable health": api.health("down"),
        "unreachable status": api.status("down"),
        "unreachable deploy": api.deploy("down", yes=True),
        "interrupted": api.run_guarded("rollback", "production", _raise(KeyboardInterrupt())),
        "internal error": api.run_guarded("rollback", "production", _raise(RuntimeError("disk on fire"))),
    }
    faber.write("003_posts", POSTS)
    faber.write("004_broken", BROKEN)
    documents["failed, restored"] = api.deploy("production", yes=True)
    faber.remove("003_posts")
    documents["failed, not needed"] = api.deploy("production", yes=True)
    documents["rehearsal failed"] = api.deploy("production", dry_run=True, rehearse=True)

    texts = {name: human(document) for name, document in documents.items()}

    assert [name for name, d in documents.items() if d.status == "error"] == [
        "rollback without a terminal",
        "resolve",
        "unknown environment",
        "unreachable health",
        "unreachable status",
        "unreachable deploy",
        "interrupted",
        "internal error",
        "failed, restored",
        "failed, not needed",
        "rehearsal failed",
    ]
    assert "   │ -- a second line of SQL" in texts["preview"] and "   │ SELECT 1;" in texts["preview"]
    assert "Lint 002_idx: " in texts["deployed"] and "require-concurrent-index-creation" in texts["deployed"]
    assert texts["nothing to preview"].splitlines()[2] == "No pending migrations"
    assert "To apply" not in texts["nothing to preview"]
    assert "  ✓ 001_users  applied" in texts["status"]
    assert "  ✓ connectivity: PostgreSQL" in texts["health"]
    assert re.search(r"Size: \d+(\.\d)? (B|KiB|MiB)", texts["backup"]), texts["backup"]
    header, row = texts["backups"].splitlines()[1:3]
    assert header.split() == ["ID", "CREATED", "SIZE", "REASON", "MIGRATIONS"]
    assert row.startswith(backup.result["id"]) and "before release" in row and "2, up to 002_idx" in row
    assert "there is no terminal to ask" in texts["rollback without a terminal"]
    assert "Transaction rolled back: yes" in texts["failed, restored"]
    assert "Rollback status: success" in texts["failed, restored"]
    assert "Rollback status: not_needed" in texts["failed, not needed"]
    assert "Backup id: " in texts["failed, not needed"]
    rehearsal = texts["rehearsal failed"]
    assert rehearsal.startswith("❌ FAILED: Migration Preview") and "COMPLETED" not in rehearsal
    assert "To apply" not in rehearsal and "Database changed: no" in rehearsal
    assert documents["rehearsal failed"].exit_code == 6
    assert (
        "Cannot connect to the down database: Database connection refused at 127.0.0.1:1" in texts["unreachable status"]
    )
    assert "pw-secret" not in "".join(texts.values())


def _raise(error: BaseException):
    def body() -> Success:
        raise error

    return body


class _FailedSecond:
    """The sqlfiles handler, with 002 recorded as failed, as a tool records a migration that failed."""

    @hookimpl
    def faber_migration_tools(self):
        return sqlfiles.faber_migration_tools()

    @hookimpl
    def faber_migration_status(self, context):
        state = sqlfiles.faber_migration_status(context)
        records = [r for r in state.records if r.name != "002_posts"]
        records.append(MigrationRecord(name="002_posts", state="failed"))
        return MigrationState(tool=state.tool, local=state.local, records=records)


def test_status_and_health_with_a_failed_migration_say_so_in_their_own_words(faber):
    from typer.testing import CliRunner

    from faber_core.cli import app

    faber.write("001_users", USERS)
    faber.write("002_posts", POSTS)
    faber.write("003_more", POSTS.replace("posts", "more"))
    assert api.deploy("production", yes=True).status == "success"
    faber.plugins.unregister(name="sqlfiles")
    faber.plugins.register(_FailedSecond(), name="failed-second")

    run = CliRunner().invoke(app, ["status", "production"])
    document = api.status("production")

    assert run.exit_code == 6, run.output
    assert run.stdout.splitlines()[0] == "✗ production: 1 failed migration(s); 2 applied, 1 pending (sqlfiles)"
    assert "  ✗ 002_posts  failed" in run.stdout and "✅" not in run.stdout
    assert document.code == "MIGRATION_FAILED" and document.result["failed"] == ["002_posts"]
    assert "faber resolve production --rolled-back 002_posts" in document.recovery.suggestions[0]
    health = api.health("production")
    assert health.exit_code == 3 and health.error.startswith(
        "Health check of production failed: migrations: failed migrations not rolled back: 002_posts"
    )
    assert health.recovery.suggestions[-1] == "Retry when issue resolved: faber health production"
    assert "Pre-deployment" not in human(health)


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text("abc xyz_")
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text("abcdefg_", min_size=1), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(result=st.dictionaries(st.text("abcdefg_", min_size=1), _json, max_size=6))
def test_any_json_result_renders_without_python_reprs(result):
    error = FaberError("Something failed", result=result, suggestions=["Try again"])
    human(ErrorDocument.from_error(error, operation="resolve-migration", environment="production"))
    human(Success(operation="resolve-migration", environment="production", result=result, message="Done"))


class _ClosedPipe:
    """stderr whose reader went away: every write fails as a closed pipe does."""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_the_progress_ticker_stops_quietly_when_stderr_is_gone(monkeypatch):
    import threading

    from faber_core.render import ProgressPrinter

    monkeypatch.setenv("FABER_PROGRESS_SECONDS", "0.1")
    uncaught = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    printer = ProgressPrinter(_ClosedPipe(), Redactor())

    printer.start_activity("Deploying migration: 0001_slow")
    printer._ticker.join(timeout=30)

    assert not printer._ticker.is_alive() and uncaught == []


def test_the_progress_ticker_ends_with_the_run(monkeypatch):
    from datetime import datetime, timezone

    from faber_core.models import AuditEvent
    from faber_core.render import ProgressPrinter

    monkeypatch.setenv("FABER_PROGRESS_SECONDS", "0.1")
    stream = io.StringIO()
    printer = ProgressPrinter(stream, Redactor())
    printer.start_activity("Deploying migration: 0001_slow")

    finished = AuditEvent(run_id="r", kind="run.finished", timestamp=datetime.now(timezone.utc), data={})
    printer(finished)
    printer._ticker.join(timeout=30)

    assert not printer._ticker.is_alive()


def test_short_steps_do_not_wake_the_progress_ticker_and_a_long_one_still_gets_its_lines(monkeypatch):
    import time

    from faber_core.render import ProgressPrinter

    monkeypatch.setenv("FABER_PROGRESS_SECONDS", "1")
    stream = io.StringIO()
    printer = ProgressPrinter(stream, Redactor())
    printer.start_activity("Deploying migration: 0000_first")
    for _ in range(1000):  # until the ticker waits for the first step's line
        if printer._wake._waiters:
            break
        time.sleep(0.01)
    printer.end_activity()
    woken = []
    notify = printer._wake.notify
    monkeypatch.setattr(printer._wake, "notify", lambda *args: (woken.append(args), notify(*args)))

    for number in range(1, 101):  # a deploy of many short migrations: no wake-up for any of them
        printer.start_activity(f"Deploying migration: {number:04d}_short")
        printer.end_activity()
    assert woken == []

    printer.start_activity("Deploying migration: 0101_long")
    time.sleep(2.6)
    printer.end_activity()

    lines = stream.getvalue().splitlines()
    assert [line for line in lines if "_short" in line or "_first" in line] == []
    assert [line for line in lines if "0101_long: " in line and "s elapsed" in line], lines


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({"status": "success"}, "✓ Restored b1; migration history matches the backup"),
        ({"status": "interrupted", "committed": True}, "✓ Restored b1; interrupted before its migration history"),
        ({"status": "interrupted", "committed": False}, "✗ Restore of b1 interrupted before it committed"),
        ({"status": "interrupted", "committed": None}, "⚠ Restore of b1 interrupted: the database is as before it"),
    ],
)
def test_the_progress_line_of_a_restore_says_which_side_of_its_commit_an_interrupt_left(data, said):
    """A restore a signal stopped before its COMMIT printed "✓ Restored …; migration history
    matches the backup" while the database was as before it (the document said RESTORE_FAILED)."""
    from datetime import datetime, timezone

    from faber_core.models import AuditEvent
    from faber_core.render import ProgressPrinter

    stream = io.StringIO()
    printer = ProgressPrinter(stream, Redactor())
    printer(
        AuditEvent(run_id="r", kind="rollback.started", timestamp=datetime.now(timezone.utc), data={"backup_id": "b1"})
    )
    finished = {"backup_id": "b1", **data}
    printer(AuditEvent(run_id="r", kind="rollback.finished", timestamp=datetime.now(timezone.utc), data=finished))

    assert said in stream.getvalue().splitlines()[-1]
