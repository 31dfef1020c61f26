"""A signal that arrives once a restore has committed never reads as if nothing was restored.

``faber rollback --to`` and a failed deploy's automatic rollback, on PostgreSQL and on MariaDB, get
SIGTERM once the real ``rollback.finished`` event is in the audit log. With ``held``, the run is
held there a few seconds (faber_core/testing/held_event.py), so the signal lands while faber is at
that moment: the outcome is decided, the signal is dropped with a warning, and the document is the
outcome (docs/workflow.md, "Interrupts"). Without, it lands wherever the run has got to by then
(the verification, faber's lock being released, the history row, the document being printed).

Either way the document must tell the truth: the backup was restored (``rollback_status:
"success"``, the backup's id); a document naming the signal is ``INTERRUPTED`` (exit 130) with
``restore_committed: true`` and what to check next; and the database really is the backup.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from faber_core import api, workflow
from faber_core.audit import unfinished
from faber_core.testing import held_event
from faber_core.testing.faults import FaberProcess, end_faber_lock_session, event_matcher
from faber_core.testing.fixtures import CANARY_PASSWORD, mysql_connect

ENVIRONMENT = "production"
URL_ENV = "FAULTS_DATABASE_URL"
PLUGINS = "faber_core.testing.sqlfiles,faber_core.testing.held_event"
HOLD_SECONDS = 5
"""How long the run holds after ``rollback.finished`` (``held``): ample time for the signal to land there."""
EXIT_BOUND = 30

BASE = """
CREATE TABLE accounts (id int PRIMARY KEY, email varchar(100) NOT NULL);
INSERT INTO accounts VALUES (1, 'one@example.com'), (2, 'two@example.com');
"""
TIER = "ALTER TABLE accounts ADD COLUMN tier int;\n"
LEDGERS = "CREATE TABLE ledgers (id int PRIMARY KEY, total int NOT NULL);\n"
FAILING = {"postgres": "SELECT 1 / 0;\n", "mysql": "SELECT * FROM no_such_table;\n"}


@dataclass
class Engine:
    name: str
    url: str
    columns: Callable[[], list[str]]
    tables: Callable[[], list[str]]
    applied: Callable[[], list[str]]


def postgres_engine(url: str) -> Engine:
    def rows(query: str) -> list[str]:
        with psycopg.connect(url) as conn:
            return [row[0] for row in conn.execute(query).fetchall()]

    return Engine(
        "postgres",
        url,
        lambda: rows("SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts' ORDER BY 1"),
        lambda: rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"),
        lambda: rows("SELECT name FROM sqlfiles_migrations ORDER BY 1"),
    )


def mysql_engine(url: str) -> Engine:
    def rows(query: str) -> list[str]:
        with mysql_connect(url) as conn:
            return [row[0] for row in conn.execute(query).fetchall()]

    schema = "TABLE_SCHEMA = DATABASE()"
    return Engine(
        "mysql",
        url,
        lambda: rows(f"SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE {schema} AND TABLE_NAME = 'accounts'"),
        lambda: rows(f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE {schema} ORDER BY 1"),
        lambda: rows("SELECT name FROM sqlfiles_migrations WHERE state = 'applied' ORDER BY 1"),
    )


@pytest.fixture(params=["postgres", "mysql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "postgres":
        return postgres_engine(request.getfixturevalue("database_url"))
    return mysql_engine(request.getfixturevalue("mysql_database_url"))


def write_project(root: Path, migrations: dict[str, str]) -> Path:
    config = root / ".fractary/plugins/faber-db/config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    settings = {"database_url_env": URL_ENV, "lock_wait_seconds": 5, "auto_rollback": True}
    config.write_text(json.dumps({"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: settings}}}))
    (root / "migrations").mkdir(exist_ok=True)
    for name, sql in migrations.items():
        (root / f"migrations/{name}.sql").write_text(sql)
    return root


def faber(project: Path, url: str, *args: str, hold_after: str | None = None) -> FaberProcess:
    """``faber *args --json``, held ``HOLD_SECONDS`` after each ``hold_after`` event."""
    env = {URL_ENV: url, "FABER_PLUGINS": PLUGINS}
    if hold_after:
        env |= {held_event.EVENT_ENV: hold_after, held_event.SECONDS_ENV: str(HOLD_SECONDS)}
    return FaberProcess.start(project, *args, "--json", env=env)


def faber_ok(project: Path, url: str, *args: str) -> dict[str, Any]:
    run = faber(project, url, *args)
    code = run.finish()
    assert code == 0, f"faber {' '.join(args)} exited {code}: {run.stdout()}\n{run.stderr()[-3000:]}"
    return json.loads(run.stdout())


def restore_ahead(engine: Engine, command: str, root: Path) -> tuple[Path, str | None]:
    """A project deployed to ``engine`` whose next run restores a backup: for ``rollback``, a backup
    of the base then two migrations deployed after it (returns its id); for ``failed-deploy``, a
    pending migration after one that fails (its backup is taken by the deploy: None)."""
    project = write_project(root, {"000_base": BASE})
    faber_ok(project, engine.url, "migrate", ENVIRONMENT, "--yes", "--skip-backup")
    if command != "rollback":
        write_project(project, {"001_tier": TIER, "002_fails": FAILING[engine.name]})
        return project, None
    backup_id = faber_ok(project, engine.url, "backup", ENVIRONMENT)["result"]["id"]
    write_project(project, {"001_tier": TIER, "002_ledgers": LEDGERS})
    faber_ok(project, engine.url, "migrate", ENVIRONMENT, "--yes", "--skip-backup")
    return project, backup_id


@pytest.mark.parametrize("held", [True, False], ids=["held-at-the-event", "as-it-runs-on"])
@pytest.mark.parametrize("command", ["rollback", "failed-deploy"])
def test_sigterm_once_the_restore_committed_says_it_committed(
    engine: Engine, command: str, held: bool, tmp_path: Path
) -> None:
    project, backup_id = restore_ahead(engine, command, tmp_path / "project")
    if backup_id is not None:
        assert "tier" in engine.columns() and "ledgers" in engine.tables()
        args: tuple[str, ...] = ("rollback", ENVIRONMENT, "--to", backup_id, "--yes")
    else:
        args = ("migrate", ENVIRONMENT, "--yes")

    run = faber(project, engine.url, *args, hold_after="rollback.finished" if held else None)
    try:
        finished = run.wait_for(event_matcher("rollback.finished"))
        alive_at_the_signal = run.running()
        run.kill(signal.SIGTERM)
        run.release()
        code = run.wait(EXIT_BOUND)
        assert code is not None, f"faber still running {EXIT_BOUND}s after SIGTERM"
    finally:
        run.stop_everything()
    out, err = run.stdout(), run.stderr()
    assert finished["data"]["status"] == "success", finished
    assert CANARY_PASSWORD not in out + err

    assert out, f"no document (exit {code}): {err[-3000:]}"
    document = json.loads(out)
    said = json.dumps(document)
    assert finished["data"]["backup_id"] == (backup_id or document["result"].get("backup_id")), said
    assert_says_restored(document, code, command, backup_id)
    if held:
        # The signal landed while the run was held at the event, its outcome decided: it was dropped,
        # and said so, not taken as an interrupt of a rollback that had happened.
        assert alive_at_the_signal and "SIGTERM" not in said, said
        assert "SIGTERM arrived once the run's outcome was decided" in err, err[-3000:]
    assert_is_the_backup(engine)


def sigterm_once_the_restore_committed(project: Path, url: str, args: tuple[str, ...]) -> tuple[dict, int | None]:
    """``faber ARGS`` sent SIGTERM once its in-place restore's COMMIT returned (held at the
    restore's "committed" step): its document and exit code."""
    run = faber(project, url, *args, hold_after="backup.restore_step")
    try:
        committed = run.wait_for(event_matcher("backup.restore_step"))
        run.kill(signal.SIGTERM)
        code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()
    assert committed["data"] == {"step": "committed", "status": "done"}, committed
    return json.loads(run.stdout()), code


@pytest.mark.parametrize("command", ["rollback", "failed-deploy"])
def test_sigterm_as_the_in_place_restore_ends_after_its_commit_says_it_committed(
    database_url: str, command: str, tmp_path: Path
) -> None:
    """SIGTERM once the in-place restore's COMMIT returned, as the provider ends (it removes its
    scratch list, closes the archive): before, the signal left the provider without an answer and
    the run said "the backup provider did not say whether it committed" (no ``restore_committed``)."""
    engine = postgres_engine(database_url)
    project, backup_id = restore_ahead(engine, command, tmp_path / "project")
    args = ("rollback", ENVIRONMENT, "--to", backup_id, "--yes") if backup_id else ("migrate", ENVIRONMENT, "--yes")

    document, code = sigterm_once_the_restore_committed(project, engine.url, args)
    assert_says_restored(document, code, command, backup_id)
    assert document["code"] == "INTERRUPTED", document
    assert "did not say" not in json.dumps(document), document
    assert_is_the_backup(engine)


def test_sigterm_after_the_in_place_restore_committed_reports_the_application_rows_it_discarded(
    database_url: str, tmp_path: Path
) -> None:
    """``faber rollback --discard-app-writes`` interrupted once its restore committed: the
    INTERRUPTED document still lists the application's rows the restore discarded
    (``writes_since_backup``), as an uninterrupted rollback's does; they are gone for good."""
    engine = postgres_engine(database_url)
    project, backup_id = restore_ahead(engine, "rollback", tmp_path / "project")
    with psycopg.connect(database_url) as application:
        application.execute("INSERT INTO accounts (id, email) VALUES (3, 'three@example.com')")
    args = ("rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--discard-app-writes")

    document, code = sigterm_once_the_restore_committed(project, engine.url, args)
    assert_says_restored(document, code, "rollback", backup_id)
    assert document["code"] == "INTERRUPTED", document
    writes = document["result"].get("writes_since_backup") or {}
    assert writes.get("status") == "found", document
    assert writes.get("tables") == [{"table": "public.accounts", "rows": 1}], document
    assert_is_the_backup(engine)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (2,)


@pytest.mark.parametrize("command", ["rollback", "failed-deploy"])
def test_a_lock_lost_once_the_restore_was_verified_is_reported_with_the_restore(
    engine: Engine, command: str, tmp_path: Path
) -> None:
    """faber's lock session ended (an operator's ``pg_terminate_backend`` or ``KILL``) once the
    restore committed and was verified, before faber checks its lock again: the document says the
    restore committed and the lock was lost meanwhile, never that nothing was restored nor a bare
    success. ``faber rollback`` exits 7 (``LOCKED``, ``restore_committed: true``); a failed deploy
    keeps its exit code and ``rollback_status: "success"``, with ``restore_committed: true``."""
    project, backup_id = restore_ahead(engine, command, tmp_path / "project")
    args = ("rollback", ENVIRONMENT, "--to", backup_id, "--yes") if backup_id else ("migrate", ENVIRONMENT, "--yes")
    run = faber(project, engine.url, *args, hold_after="rollback.finished")

    def connect(url: str) -> Any:
        return psycopg.connect(url, autocommit=True) if engine.name == "postgres" else mysql_connect(url)

    try:
        finished = run.wait_for(event_matcher("rollback.finished"))  # the run holds here
        with connect(engine.url) as test:
            end_faber_lock_session(test)
        run.release()
        code = run.finish(EXIT_BOUND * 4)
    finally:
        run.stop_everything()
    out, err = run.stdout(), run.stderr()
    assert finished["data"]["status"] == "success", finished
    assert "Traceback" not in err and CANARY_PASSWORD not in out + err, err[-3000:]
    document = json.loads(out)
    result = document["result"]
    if command == "rollback":
        assert (code, document["code"]) == (7, "LOCKED"), document
        assert result["restore_committed"] is True and result["backup_id"] == backup_id, document
    else:
        assert (code, document["code"]) == (6, "MIGRATION_FAILED"), document
        assert (result["rollback_status"], result["restore_committed"]) == ("success", True), document
        suggestions = document["recovery"]["suggestions"]
        assert any("faber's lock was lost while the restore ran" in s for s in suggestions), suggestions
    assert_is_the_backup(engine)


def assert_says_restored(
    document: dict[str, Any], code: int, command: str, backup_id: str | None, sent: str = "SIGTERM"
) -> None:
    """The document says the backup was restored, whichever way the run ended."""
    result = document.get("result") or {}
    said = json.dumps(document)
    assert result.get("backup_id") and result["backup_id"] == (backup_id or result["backup_id"]), said
    assert result.get("rollback_status") == "success", said
    if sent in said:
        # Stopped before the outcome was decided (its verification, say): the signal is what the run
        # ends on, and it says the restore committed and how to check it.
        assert (code, document["code"]) == (130, "INTERRUPTED"), said
        assert result["restore_committed"] is True and result["interrupted_by"] == sent, said
        assert any(f"faber status {ENVIRONMENT}" in hint for hint in document["recovery"]["suggestions"]), said
    elif command == "rollback":
        assert (code, document["status"], result["verified"]) == (0, "success", True), said
    else:
        assert (code, document["code"]) == (6, "MIGRATION_FAILED"), said
        assert "002_fails" in document["error"] and result["applied_migrations"] == ["001_tier"], said


def assert_is_the_backup(engine: Engine) -> None:
    """No tier column, no ledgers, 000_base alone applied."""
    assert "tier" not in engine.columns(), engine.columns()
    assert "ledgers" not in engine.tables(), engine.tables()
    assert engine.applied() == ["000_base"]


def sigterm_as_the_lock_is_released(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make faber's lock, as each run releases it, send SIGTERM to this process (handled at once,
    in this thread); returns the signals sent, one per release."""
    locked = workflow.deploy_lock
    sent: list[int] = []

    @contextlib.contextmanager
    def lock_released_as_a_signal_lands(context, **options):
        with locked(context, **options) as lock:
            try:
                yield lock
            finally:
                sent.append(signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(workflow, "deploy_lock", lock_released_as_a_signal_lands)
    return sent


@pytest.mark.parametrize("command", ["rollback", "failed-deploy"])
def test_sigterm_as_faber_releases_its_lock_after_the_restore_stops_nothing(
    engine: Engine, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A real SIGTERM (to this process, running the command) sent as faber releases its lock, once
    the restore was verified and the failed deploy's report built: the run ends with that outcome.
    Raised there, it replaced the failed deploy's report with a bare "Interrupted by SIGTERM"."""
    project, backup_id = restore_ahead(engine, command, tmp_path / "project")
    monkeypatch.setenv(URL_ENV, engine.url)
    monkeypatch.setenv("FABER_PLUGINS", "faber_core.testing.sqlfiles")
    sent = sigterm_as_the_lock_is_released(monkeypatch)
    if command == "rollback":
        document = api.rollback(ENVIRONMENT, to=backup_id, yes=True, working_directory=project)
    else:
        document = api.deploy(ENVIRONMENT, yes=True, working_directory=project)
    err = capsys.readouterr().err

    assert sent == [signal.SIGTERM], "the lock was not released once"
    assert_says_restored(document.model_dump(mode="json"), document.exit_code, command, backup_id)
    assert "SIGTERM arrived once the run's outcome was decided" in err, err[-3000:]
    assert_is_the_backup(engine)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.parametrize("command", ["rollback", "failed-deploy"])
def test_a_signal_during_the_verification_of_a_committed_restore_says_it_committed(
    engine: Engine, command: str, signum: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real signal (to this process) as faber starts verifying a restore its provider said had
    committed: the run ends on the signal (130), saying the restore committed. SIGHUP, taken as
    SIGTERM, once failed the restore's own outcome model, which knew SIGINT and SIGTERM only."""
    project, backup_id = restore_ahead(engine, command, tmp_path / "project")
    monkeypatch.setenv(URL_ENV, engine.url)
    monkeypatch.setenv("FABER_PLUGINS", "faber_core.testing.sqlfiles")
    forget = unfinished.forget_restored
    sent: list[int] = []

    def verification_starting_as_a_signal_lands(context, backup):
        if not sent:  # the verification's call; the run settled on the signal calls it again
            sent.append(signum)
            os.kill(os.getpid(), signum)  # handled at once, in this thread
        forget(context, backup)

    monkeypatch.setattr(unfinished, "forget_restored", verification_starting_as_a_signal_lands)
    hangup = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as from a terminal: faber takes it as SIGTERM
    try:
        if command == "rollback":
            document = api.rollback(ENVIRONMENT, to=backup_id, yes=True, working_directory=project)
        else:
            document = api.deploy(ENVIRONMENT, yes=True, working_directory=project)
    finally:
        signal.signal(signal.SIGHUP, hangup)

    said = document.model_dump(mode="json")
    assert sent == [signum], "the verification never started"
    assert signum.name in json.dumps(said), said
    assert_says_restored(said, document.exit_code, command, backup_id, sent=signum.name)
    assert_is_the_backup(engine)


def test_sigterm_as_a_verified_deploy_releases_its_lock_stops_nothing(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The same moment after a deploy that committed every migration and verified them: the run ends
    with its success, not a bare "Interrupted by SIGTERM" that says nothing of what committed."""
    project = write_project(tmp_path / "project", {"000_base": BASE})
    faber_ok(project, engine.url, "migrate", ENVIRONMENT, "--yes", "--skip-backup")
    write_project(project, {"001_tier": TIER, "002_ledgers": LEDGERS})
    monkeypatch.setenv(URL_ENV, engine.url)
    monkeypatch.setenv("FABER_PLUGINS", "faber_core.testing.sqlfiles")
    sent = sigterm_as_the_lock_is_released(monkeypatch)
    document = api.deploy(ENVIRONMENT, yes=True, working_directory=project)
    err = capsys.readouterr().err

    assert sent == [signal.SIGTERM], "the lock was not released once"

    said = document.model_dump(mode="json")
    assert (document.exit_code, said["status"], said["result"]["migrations_applied"]) == (0, "success", 2), said
    assert "SIGTERM arrived once the run's outcome was decided" in err, err[-3000:]
    assert "tier" in engine.columns() and "ledgers" in engine.tables()
    assert engine.applied() == ["000_base", "001_tier", "002_ledgers"]
