"""Crash safety of one run at a time: a killed migration.

Each test drives the real ``faber`` command on a real PostgreSQL and interrupts it at a moment
found through its audit log and the server's view of its sessions. The sweep over every step is
in test_fault_injection.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from faber_core.config import CONFIG_PATH
from faber_core.engines import REHEARSAL_PREFIX
from faber_core.postgres.locks import faber_lock_key
from faber_core.postgres.scratch import rehearsal_comment
from faber_core.testing.faults import (
    AUDIT_LOG,
    AnswerDropped,
    FaberProcess,
    KilledInsideAMigration,
    backup_files,
    end_faber_lock_session,
    event_matcher,
    holdable_migration,
    migration_session,
    session_settings,
    snapshot,
    wait_for_server_release,
)
from faber_core.testing.fixtures import CANARY_PASSWORD, TEST_SESSION, wait_for

ENVIRONMENT = "production"
URL_ENV = "FAULTS_DATABASE_URL"
SQLFILES = "faber_core.testing.sqlfiles"
BASE = """
CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);
INSERT INTO accounts (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 1000) g;
"""
SERVER_BOUND = 5
"""Seconds the server may take to notice a dead client and end its sessions and locks."""
EXIT_BOUND = 30
"""Seconds faber may take to end after SIGTERM/SIGINT (it may roll back first)."""


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@pytest.fixture
def project(faber_project, database_url):
    """``make(migrations, root=None, **settings) -> Path``: a sqlfiles project on the test's database,
    000_base deployed, ``migrations`` pending."""

    def make(migrations: dict[str, str], root: Path | None = None, **settings) -> Path:
        environment = {"database_url_env": URL_ENV, "lint": "warn", "lock_wait_seconds": 5, **settings}
        config = {"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: environment}}}
        directory = faber_project(config, {"migrations/000_base.sql": BASE}, root=root)
        base = start(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--skip-backup", "--json")
        assert base.finish() == 0, base.stdout() + base.stderr()
        for name, sql in migrations.items():
            (directory / "migrations" / f"{name}.sql").write_text(sql)
        return directory

    return make


def start(project: Path, url: str, *args: str, env: dict[str, str] | None = None) -> FaberProcess:
    return FaberProcess.start(project, *args, env={"FABER_PLUGINS": SQLFILES, URL_ENV: url, **(env or {})})


# A killed migration's session and its locks end soon --------------------------------

LONG_ALTER = "ALTER TABLE accounts ADD COLUMN z int; SELECT pg_sleep(20);"
READ_BOUND = 5
"""Seconds within which ``accounts`` must be readable again (the migration would sleep 20)."""


def readable_within(url: str, seconds: float) -> float | None:
    """Seconds until ``SELECT count(*) FROM accounts`` succeeds (each try waits 0.3 s for its lock)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            with psycopg.connect(url, autocommit=True, options="-c lock_timeout=300") as conn:
                conn.execute("SELECT count(*) FROM accounts")
            return time.monotonic() - started
        except psycopg.errors.LockNotAvailable:
            continue
    return None


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_reads_work_again_soon_after_faber_dies_inside_a_long_migration(project, database_url, signum):
    directory = project({"001_long": LONG_ALTER})
    run = start(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    try:
        run.wait_for(event_matcher("migration.started", name="001_long"))
        with psycopg.connect(database_url, autocommit=True) as conn:
            run.wait_until(
                lambda: conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
                ).fetchone(),
                what="the migration sleeping",
            )
        run.kill(signum)
        assert run.wait(EXIT_BOUND) is not None
        waited = readable_within(database_url, READ_BOUND)
    finally:
        run.stop_everything()
    assert waited is not None, f"accounts still locked {READ_BOUND}s after {signum.name}"
    assert not wait_for_server_release(database_url, database_name(database_url), within=SERVER_BOUND)


# A killed migration whose SQL cannot run in a transaction, its handler silent about it ------

UNFLAGGED_HANDLER = """
from faber_core import hookimpl
from faber_core.models import AppliedMigration, ApplyOutcome, MigrationPreview, ToolInfo
from faber_core.support.sql import split_statements
from faber_core.testing.sqlfiles import BOOKKEEPING, TOOL, faber_migration_status


@hookimpl
def faber_migration_tools():
    return [ToolInfo(name=TOOL, description="migrations/*.sql, statement by statement outside a transaction")]


@hookimpl
def faber_migration_preview(pending):
    return [MigrationPreview(name=m.name, sql=m.handler_data, transactional=False) for m in pending]


@hookimpl
def faber_migration_apply(context, pending):
    outcome = ApplyOutcome()
    with context.database.connect(application_name="faber unflagged apply", migration_session=True) as conn:
        conn.execute(BOOKKEEPING)
        context.apply_session_timeouts(conn)
        for migration in pending:
            context.start_migration(migration.name)
            for statement in split_statements(migration.handler_data):
                conn.execute(statement)
            conn.execute("INSERT INTO sqlfiles_migrations VALUES (%s, %s)", [migration.name, migration.checksum])
            applied = AppliedMigration(name=migration.name, duration_seconds=0)
            outcome.applied.append(applied)
            context.migration_applied(applied)
    return outcome
"""
"""sqlfiles' migrations run statement by statement outside a transaction and recorded once finished,
``LocalMigration.transactional`` left unset: as the plain SQL example handler ran them."""


def test_a_deploy_killed_inside_sql_that_cannot_run_in_a_transaction_stops_the_next_though_its_handler_did_not_say(
    faber_project, database_url, run_faber, tmp_path, monkeypatch
):
    """faber's analysis of the SQL knows that ``CREATE INDEX CONCURRENTLY`` cannot run in a
    transaction. It recorded nothing for a handler that left the flag unset: killed after the copy
    committed, the status named nothing failed and the next deploy ran the copy again."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "unflagged_handler.py").write_text(UNFLAGGED_HANDLER)
    monkeypatch.setenv("FABER_PLUGINS", "unflagged_handler")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(URL_ENV, database_url)
    killed = KilledInsideAMigration(database_url)
    migration = "001_index_and_copy"
    sql = f"CREATE INDEX CONCURRENTLY ledger_id ON ledger (id);\n{killed.copy_statement};\n{killed.hold_statement};\n"
    staging = {
        "database_url_env": URL_ENV,
        "backup_before_migrate": True,
        "auto_rollback": True,
        "protected": True,
        "lock_timeout_seconds": 0,  # a protected environment's 0.5 s would end the held migration's wait
        "lint": "off",
    }
    config = {"database": {"migration_tool": "sqlfiles", "environments": {"staging": staging}}}
    project = faber_project(config, {f"migrations/{migration}.sql": sql})

    killed.check(project, migration, run_faber, "resolve", undo=["DROP INDEX ledger_id"])


# A command waiting for faber's lock stops at the first signal -------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.parametrize("command", ["rollback", "migrate", "backup", "resolve"])
def test_a_signal_ends_the_wait_for_faber_lock_and_changes_nothing(project, database_url, signum, command):
    directory = project({}, lock_wait_seconds=600)
    backup = start(directory, database_url, "backup", ENVIRONMENT, "--json")
    assert backup.finish() == 0, backup.stdout()
    (directory / "migrations" / "001_orders.sql").write_text("CREATE TABLE orders (id int);")
    before = snapshot(database_url)
    with psycopg.connect(database_url, autocommit=True) as other_run:
        other_run.execute("SELECT pg_advisory_lock(%s)", [faber_lock_key(database_name(database_url))])
        backups = backup_files(directory)
        options = {"backup": [], "resolve": ["--rolled-back", "001_orders"]}.get(command, ["--yes"])
        run = start(directory, database_url, command, ENVIRONMENT, *options, "--json")
        try:
            run.wait_for(event_matcher("step.finished", step="lock"))  # connected: from here it waits
            run.kill(signum)
            code = run.wait(EXIT_BOUND)  # the lock wait would last 600 s
        finally:
            run.stop_everything()

    assert code == 130, run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED" and document["result"]["interrupted_by"] == signum.name
    assert "lock.acquired" not in run.kinds()
    if command == "rollback":  # stopped before its restore began: it says nothing was restored
        result = document["result"]
        assert (result.get("rollback_status"), result.get("restore_committed")) == ("failed", False), document
    assert not snapshot(database_url).differences(before)
    assert backup_files(directory) == backups
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.parametrize("command", ["rollback", "migrate"])
def test_a_signal_at_the_approval_prompt_is_an_interrupt_that_changes_nothing(project, database_url, signum, command):
    """faber asks on its terminal (a pty) before it restores or deploys a protected environment; a
    CI runner's SIGTERM or a Ctrl-C there ends the run as an interrupt (exit 130, ``INTERRUPTED``,
    a rollback's ``restore_committed: false``), not as a question answered no, and changes nothing."""
    directory = project({})
    backup = start(directory, database_url, "backup", ENVIRONMENT, "--json")
    assert backup.finish() == 0, backup.stdout()
    backup_id = json.loads(backup.stdout())["result"]["id"]
    (directory / "migrations" / "001_orders.sql").write_text("CREATE TABLE orders (id int);")
    if command == "rollback":
        with psycopg.connect(database_url) as conn:
            conn.execute("CREATE TABLE since_backup (id int)")  # what a restore would drop
    before = snapshot(database_url)
    backups = backup_files(directory)
    args = ["--to", backup_id] if command == "rollback" else []
    run, terminal = start_on_a_terminal(directory, database_url, command, ENVIRONMENT, *args, "--json")
    try:
        run.wait_for_prompt()
        run.kill(signum)
        code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()
        os.close(terminal)

    assert code == 130, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED" and document["result"]["interrupted_by"] == signum.name, document
    if command == "rollback":
        result = document["result"]
        assert (result.get("rollback_status"), result.get("restore_committed")) == ("failed", False), document
    assert not snapshot(database_url).differences(before)
    assert backup_files(directory) == backups
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_a_terminal_closing_at_the_approval_prompt_is_a_hangup_that_changes_nothing(project, database_url):
    """The terminal (or SSH session) faber asks on closes while the question waits: SIGHUP and the end
    of its input come together, and the run ends as interrupted by SIGHUP, having changed nothing."""
    directory = project({"001_orders": "CREATE TABLE orders (id int);"})
    before = snapshot(database_url)
    terminal, seat = pty.openpty()
    argv = [sys.executable, "-m", "faber_core", "migrate", ENVIRONMENT, "--cwd", str(directory)]
    offset = (directory / AUDIT_LOG).stat().st_size
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        argv,
        stdin=seat,
        stdout=seat,
        stderr=stderr,
        env={**os.environ, "FABER_PLUGINS": SQLFILES, URL_ENV: database_url},
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # the pty is its terminal
    )
    os.close(seat)
    run = FaberProcess(directory, argv, proc, tempfile.TemporaryFile(), stderr, offset)
    try:
        run.wait_for_prompt()
        os.close(terminal)  # the terminal window, or the SSH session, closes
        code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()

    finished = run.wait_for("run.finished", timeout=0)
    assert code == 130, finished
    assert finished["data"]["document"]["result"]["interrupted_by"] == "SIGHUP", finished
    assert not snapshot(database_url).differences(before)


def start_on_a_terminal(directory: Path, url: str, *args: str) -> tuple[FaberProcess, int]:
    return FaberProcess.start_on_a_terminal(directory, *args, env={"FABER_PLUGINS": SQLFILES, URL_ENV: url})


def test_a_rollback_whose_lock_was_lost_while_a_person_approved_restores_nothing(project, database_url):
    """faber rollback checks its lock once more after its prompt: ended while the question waited
    (an idle-session timeout, an operator), and taken by another run, the yes restores nothing:
    exit 7, LOCKED, the database unchanged."""
    directory = project({})
    backup = start(directory, database_url, "backup", ENVIRONMENT, "--json")
    assert backup.finish() == 0, backup.stdout()
    backup_id = json.loads(backup.stdout())["result"]["id"]
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE since_backup (id int)")  # what a restore would drop
    before = snapshot(database_url)
    run, terminal = start_on_a_terminal(directory, database_url, "rollback", ENVIRONMENT, "--to", backup_id, "--json")
    try:
        # Named as faber's, as another run's session is: its counters are not waited for.
        with psycopg.connect(database_url, autocommit=True, application_name=TEST_SESSION) as other_run:
            run.wait_for_prompt()
            end_faber_lock_session(other_run)
            key = faber_lock_key(database_name(database_url))
            run.wait_until(
                lambda: other_run.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0],
                what="faber's lock taken by another run",
            )
            os.write(terminal, b"y\n")
            code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()
        os.close(terminal)

    assert code == 7, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "LOCKED", document
    assert not snapshot(database_url).differences(before)
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


# The reader of faber's progress goes away -------------------------------------------------

HELD = holdable_migration("002_held", "UPDATE accounts SET tier = 2 WHERE id < 100;")
THIRD = "CREATE TABLE ledgers (id bigint PRIMARY KEY);"


def test_a_deploy_whose_progress_reader_dies_goes_on_and_reports_what_it_did(project, database_url):
    """faber's progress lines go to a pipe (``| tee``, a CI log shipper, an SSH channel) whose
    reader is killed in the middle of a migration: the deploy is not cut short between its
    migrations by the closed pipe; it finishes, records itself and prints its document."""
    directory = project({"001_tier": "ALTER TABLE accounts ADD COLUMN tier int;", "002_held": HELD, "003_c": THIRD})
    reader_end, writer_end = os.pipe()
    reader = subprocess.Popen(["cat"], stdin=reader_end, stdout=subprocess.DEVNULL)
    os.close(reader_end)
    argv = [sys.executable, "-m", "faber_core", "migrate", ENVIRONMENT, "--yes", "--json", "--cwd", str(directory)]
    held = session_settings(hold="002_held", hold_seconds=3)
    environment = {**os.environ, "FABER_PLUGINS": SQLFILES, URL_ENV: database_url, **held}
    offset = (directory / AUDIT_LOG).stat().st_size
    stdout, unused = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=writer_end, env=environment)
    os.close(writer_end)
    run = FaberProcess(directory, argv, proc, stdout, unused, offset)
    try:
        run.wait_for(event_matcher("migration.started", name="002_held"))
        reader.kill()
        reader.wait()
        code = run.finish(EXIT_BOUND)
    finally:
        run.stop_everything()
        reader.kill()

    document = json.loads(run.stdout())
    assert code == 0, document
    assert [m["name"] for m in document["result"]["migrations"]] == ["001_tier", "002_held", "003_c"]
    assert "run.finished" in run.kinds()
    with psycopg.connect(database_url) as conn:
        applied = [name for (name,) in conn.execute("SELECT name FROM sqlfiles_migrations ORDER BY name")]
    assert applied == ["000_base", "001_tier", "002_held", "003_c"]


# A signal as the finished run closes what it kept ---------------------------------------------

SIGNALLED_AT_CLOSE = """
import os, signal, time
from pathlib import Path

from faber_core import hookimpl
from faber_core.models import HealthCheckInfo, HealthCheckResult


class SignalsAsItCloses:
    def close(self):
        Path(os.environ["SIGNALLED_AT_CLOSE"]).write_text("sent")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)  # as a Node runner takes a moment to stop: the handler runs meanwhile


@hookimpl
def faber_health_check_names():
    return [HealthCheckInfo(name="keeps", description="keeps a resource for the run")]


@hookimpl
def faber_health_checks(context, checks):
    if "keeps" not in checks:
        return []
    context.kept("signals as it closes", SignalsAsItCloses)
    return [HealthCheckResult(name="keeps", status="passed", details="kept")]
"""
"""A plugin that keeps, for the run, a resource whose closing (at the run's end, after its
``run.finished`` event) brings faber a SIGTERM: the moment a Node runner stops."""


def test_a_signal_as_the_finished_run_closes_what_it_kept_keeps_its_document(project, database_url, tmp_path):
    """The deploy is over and recorded when faber closes what hooks kept (the Node runner, which
    takes a moment to stop): a signal then stops nothing, and the document is printed. It escaped
    there: exit 130, no document, for a deploy the audit log had finished with exit 0. Dropped, it
    is said on stderr, as at the run's other settled moments; it was dropped without a word."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "signals_at_close.py").write_text(SIGNALLED_AT_CLOSE)
    sent = tmp_path / "sent"
    directory = project({"001_tier": "ALTER TABLE accounts ADD COLUMN tier int;"})
    config = json.loads((directory / CONFIG_PATH).read_text())
    config["database"]["environments"][ENVIRONMENT]["health_checks"] = ["connectivity", "keeps"]
    (directory / CONFIG_PATH).write_text(json.dumps(config))
    path = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
    env = {"FABER_PLUGINS": f"{SQLFILES},signals_at_close", "PYTHONPATH": path, "SIGNALLED_AT_CLOSE": str(sent)}
    run = FaberProcess.start(
        directory, "migrate", ENVIRONMENT, "--yes", "--json", "--skip-backup", env={URL_ENV: database_url, **env}
    )
    code = run.finish(EXIT_BOUND)

    assert sent.read_text() == "sent"
    assert code == 0, run.stdout() + run.stderr()
    assert json.loads(run.stdout())["status"] == "success"
    assert "Traceback" not in run.stderr()
    assert (
        "warning: SIGTERM arrived once the run's outcome was decided: it stopped nothing, and the document "
        "reports that outcome\n"
    ) in run.stderr()


# A signal while a finalizer runs ---------------------------------------------------------

SIGNALLED_IN_A_FINALIZER = """
import os, signal, time

from faber_core import hookimpl


class SignalledAsItIsFinalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)  # the handler runs meanwhile, inside the finalizer


@hookimpl
def faber_audit_event(event):
    if event.kind == "migration.started" and event.data.get("name") == "002_ledgers":
        SignalledAsItIsFinalized()  # dropped at once: its finalizer runs here
        time.sleep(1)  # the migration goes on: a signal stops it
"""
"""A plugin in whose object's finalizer (``__del__``) faber gets a SIGTERM, as migration 002 starts."""


def test_a_signal_while_a_finalizer_runs_still_stops_the_deploy(project, database_url, tmp_path):
    """Python ignores an exception raised in a finalizer (an object's ``__del__``, a generator the
    garbage collector closes), and finalizers run wherever faber is. A SIGTERM landing in one was
    lost: "Exception ignored" and a traceback on stderr, and the deploy it was meant to stop went
    on to the end (seen in the MySQL step sweep: a SIGTERM at the backup, then every migration
    applied and exit 0)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "signalled_in_a_finalizer.py").write_text(SIGNALLED_IN_A_FINALIZER)
    directory = project(
        {"001_tier": "ALTER TABLE accounts ADD COLUMN tier int;", "002_ledgers": "CREATE TABLE ledgers (id int);"}
    )
    path = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
    env = {URL_ENV: database_url, "FABER_PLUGINS": f"{SQLFILES},signalled_in_a_finalizer", "PYTHONPATH": path}
    run = FaberProcess.start(directory, "migrate", ENVIRONMENT, "--yes", "--json", env=env)
    code = run.finish(EXIT_BOUND)

    assert code == 130, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED" and document["result"]["interrupted_by"] == "SIGTERM"
    assert "Exception ignored" not in run.stderr() and "Traceback" not in run.stderr()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('ledgers')").fetchone()[0] is None


# A closed terminal or SSH session (SIGHUP) --------------------------------------------------

SLEEPING = holdable_migration("002_held", "SELECT 1;")


def test_a_hangup_mid_deploy_is_an_interrupt_that_rolls_back_and_reports(project, database_url):
    """The SSH session a deploy runs in drops: its shell sends SIGHUP, whose default action would
    end faber at once, the deploy half done and unreported. It is an interrupt like SIGTERM."""
    directory = project({"001_tier": "ALTER TABLE accounts ADD COLUMN tier int;", "002_held": SLEEPING})
    before = snapshot(database_url)
    held = session_settings(hold="002_held")
    run = start(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json", env=held)
    try:
        run.wait_for(event_matcher("migration.started", name="002_held"))
        run.kill(signal.SIGHUP)
        code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()

    assert code == 130, run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED" and document["result"]["interrupted_by"] == "SIGHUP"
    assert document["result"]["applied_migrations"] == ["001_tier"]
    assert document["result"]["rollback_status"] == "success", document
    assert not snapshot(database_url).differences(before)


def test_under_nohup_a_hangup_does_not_stop_a_deploy(project, database_url):
    """``nohup faber migrate ...`` asks to outlive the terminal: faber leaves SIGHUP ignored."""
    directory = project({"001_tier": "ALTER TABLE accounts ADD COLUMN tier int;", "002_held": SLEEPING})
    held = session_settings(hold="002_held", hold_seconds=2)
    faber = [sys.executable, "-m", "faber_core", "migrate", ENVIRONMENT, "--yes", "--json", "--cwd", str(directory)]
    environment = {"FABER_PLUGINS": SQLFILES, URL_ENV: database_url, **held}
    run = FaberProcess.spawn(directory, ["nohup", *faber], env=environment)
    try:
        run.wait_for(event_matcher("migration.started", name="002_held"))
        run.kill(signal.SIGHUP)
        code = run.finish(EXIT_BOUND)
    finally:
        run.stop_everything()

    assert code == 0, run.stdout() + run.stderr()
    assert [m["name"] for m in json.loads(run.stdout())["result"]["migrations"]] == ["001_tier", "002_held"]


def test_a_deploy_started_in_the_background_by_a_script_is_still_interrupted_by_sigint(project, database_url):
    """A script's ``faber migrate ... &`` starts with SIGINT ignored (the shell's rule for background
    jobs). A cancelled CI job sends SIGINT first: faber takes it as an interrupt all the same, and
    the deploy is rolled back and reported, not left running until SIGTERM or SIGKILL."""
    directory = project({"001_tier": "ALTER TABLE accounts ADD COLUMN tier int;", "002_held": SLEEPING})
    before = snapshot(database_url)
    held = session_settings(hold="002_held")
    faber = [sys.executable, "-m", "faber_core", "migrate", ENVIRONMENT, "--yes", "--json", "--cwd", str(directory)]
    environment = {"FABER_PLUGINS": SQLFILES, URL_ENV: database_url, **held}
    run = FaberProcess.spawn(directory, ["sh", "-c", "trap '' INT; exec \"$@\"", "sh", *faber], env=environment)
    try:
        run.wait_for(event_matcher("migration.started", name="002_held"))
        run.kill(signal.SIGINT)
        code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()

    assert code == 130, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED" and document["result"]["interrupted_by"] == "SIGINT", document
    assert document["result"]["rollback_status"] == "success", document
    assert not snapshot(database_url).differences(before)


def test_a_deploy_whose_terminal_closes_rolls_back_records_it_and_exits_130(project, database_url):
    """The real event: faber runs on a terminal (a pty) that closes mid-deploy. It gets SIGHUP,
    and every line it then writes fails (EIO): it rolls back all the same, records the run, and
    exits with the run's code, though nobody reads its document any more."""
    directory = project({"001_tier": "ALTER TABLE accounts ADD COLUMN tier int;", "002_held": SLEEPING})
    before = snapshot(database_url)
    terminal, seat = pty.openpty()
    faber = [sys.executable, "-m", "faber_core", "migrate", ENVIRONMENT, "--yes", "--cwd", str(directory)]
    held = session_settings(hold="002_held")
    environment = {**os.environ, "FABER_PLUGINS": SQLFILES, URL_ENV: database_url, **held}
    offset = (directory / AUDIT_LOG).stat().st_size
    proc = subprocess.Popen(
        faber,
        stdin=seat,
        stdout=seat,
        stderr=seat,
        env=environment,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # the pty is its terminal
    )
    os.close(seat)
    run = FaberProcess(directory, faber, proc, tempfile.TemporaryFile(), tempfile.TemporaryFile(), offset)
    try:
        run.wait_for(event_matcher("migration.started", name="002_held"))
        os.close(terminal)  # the terminal window, or the SSH session, closes
        code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()

    assert code == 130
    finished = run.wait_for("run.finished", timeout=0)
    assert finished["data"]["document"]["result"]["interrupted_by"] == "SIGHUP"
    assert finished["data"]["document"]["result"]["rollback_status"] == "success"
    assert not snapshot(database_url).differences(before)


# A migration stopped by a signal: what it wrote is faber's ----------------------------------


def test_rows_of_a_migration_a_signal_stopped_are_faber_s_and_the_deploy_is_rolled_back(project, database_url):
    """SIGTERM inside a migration that updated rows: its transaction rolls back, and the measured
    transaction counts what it tried as faber's own writes. So the automatic rollback (a protected
    environment: it refuses to discard the application's rows) restores the migration before it,
    instead of taking the stopped migration's rows for the application's and restoring nothing."""
    updating = holdable_migration("002_held", "UPDATE accounts SET tier = 2 WHERE id <= 100;")
    directory = project({"001_tier": "ALTER TABLE accounts ADD COLUMN tier int;", "002_held": updating})
    before = snapshot(database_url)
    held = session_settings(hold="002_held")
    run = start(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json", env=held)
    try:
        run.wait_for(event_matcher("migration.started", name="002_held"))
        with psycopg.connect(database_url, autocommit=True) as conn:
            run.wait_until(lambda: migration_session(conn, database_name(database_url), "002_held"), what="002 held")
        run.kill(signal.SIGTERM)
        code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()

    assert code == 130, run.stderr()
    result = json.loads(run.stdout())["result"]
    assert result["applied_migrations"] == ["001_tier"] and result["transaction_rolled_back"] is True, result
    assert result["writes_since_backup"]["status"] == "none", result
    assert result["rollback_status"] == "success", result
    assert not snapshot(database_url).differences(before)


# A signal while a rehearsal copy is being dropped -------------------------------------

CANCEL_BOUND = 3
"""Seconds given to a signal to cancel faber's DROP DATABASE of its copy before the test lets the
drop through: the drop must never be cancelled, so waiting longer can only let the test pass."""


def rehearsal_copies(admin_url: str) -> list[str]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'faber\\_rehearsal\\_%'").fetchall()
    return [name for (name,) in rows]


def drop_waiting(admin_url: str, database: str) -> bool:
    """Whether faber's DROP DATABASE of ``database`` waits for a lock."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'DROP DATABASE%%'"
            " AND strpos(query, %s) > 0",
            [database],
        ).fetchone()
    return row is not None


@pytest.mark.parametrize(
    "signals",
    [[signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM], [signal.SIGTERM, signal.SIGINT]],
    ids=["once-after-the-rehearsal", "twice-SIGTERM", "twice-SIGINT"],
)
def test_a_signal_while_the_rehearsal_copy_is_dropped_does_not_leave_it_behind(
    project, database_url, postgres_admin_url, signals
):
    """A signal arriving during the DROP DATABASE of a ``--rehearse`` copy cancelled it, and the
    copy stayed on the server, unreported (``faber status`` names one once it is 15 minutes old):
    the one that ends a finished rehearsal, or the second of two (CI runners and impatient
    fingers signal twice), the first having stopped the rehearsal. The drop holds the signal
    back; faber exits 130 once the copy is gone.

    The test's uncommitted comment on the copy makes faber's drop wait. Signalled once, the
    migration waits for that comment (an idle-in-transaction session with the test's name; the
    statistics snapshot cleared at each look, as it is kept for the transaction) and returns;
    twice, the first signal stops the migration while it sleeps."""
    gate = f"faber-test-gate-{os.getpid()}-{len(signals)}"
    wait_for_gate = (
        "DO $$ BEGIN WHILE NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = "
        f"'{gate}' AND state = 'idle in transaction') LOOP PERFORM pg_sleep(0.05), pg_stat_clear_snapshot();"
        " END LOOP; END $$;"
    )
    held = "" if len(signals) == 1 else "\nSELECT pg_sleep(60);"
    directory = project({"001_slow": f"-- faults:rehearsed\n{wait_for_gate}{held}"})
    run = start(directory, database_url, "migrate", ENVIRONMENT, "--dry-run", "--rehearse", "--json")
    try:
        copy = run.wait_for("rehearsal.created")["data"]["database"]
        with (
            psycopg.connect(postgres_admin_url, autocommit=True, application_name=gate) as admin,
            psycopg.connect(postgres_admin_url, autocommit=True) as watcher,
        ):
            admin.execute("BEGIN")
            admin.execute(f"COMMENT ON DATABASE \"{copy}\" IS 'held by the test'")
            if len(signals) > 1:
                run.wait_until(lambda: migration_session(watcher, copy, "rehearsed"), what="the rehearsed migration")
                run.kill(signals[0])  # stops the rehearsal
            run.wait_until(lambda: drop_waiting(postgres_admin_url, copy), what="faber's DROP DATABASE to wait")
            run.kill(signals[-1])
            deadline = time.monotonic() + CANCEL_BOUND
            while time.monotonic() < deadline and drop_waiting(postgres_admin_url, copy):
                time.sleep(0.05)
            admin.execute("ROLLBACK")
        code = run.wait(timeout=EXIT_BOUND)
    finally:
        run.stop_everything()

    assert copy not in rehearsal_copies(postgres_admin_url), "the rehearsal copy was left on the server"
    assert code == 130, run.stdout() + run.stderr()
    assert json.loads(run.stdout())["code"] == "INTERRUPTED"


def test_a_signal_while_the_rehearsal_copy_is_being_labelled_drops_it(
    project, database_url, postgres_admin_url, tmp_path
):
    """faber creates its copy, then labels it (``COMMENT ON DATABASE``: what ties a leftover copy
    to its target for ``faber status``). A signal between the two left the copy on the server,
    unlabelled: never dropped, never reported.

    The test holds the comments' catalog while faber labels its copy, so the label waits. To keep
    every other session's comments waiting as briefly as possible, the catalog is locked only once
    faber looks for its client programs, just before it creates the copy: a ``pg_dump`` on PATH
    that waits for the test's word when asked its version."""
    directory = project({"001_users": "CREATE TABLE users (id int);"})
    shims, gate, asked = tmp_path / "bin", tmp_path / "gate", tmp_path / "asked"
    shims.mkdir()
    for program in ("pg_dump", "pg_restore", "psql"):
        real = shutil.which(program)
        assert real, f"{program} is not installed"
        wait = f'if [ "$1" = --version ]; then touch {asked}; while [ ! -e {gate} ]; do sleep 0.05; done; fi\n'
        (shims / program).write_text(f'#!/bin/sh\n{wait if program == "pg_dump" else ""}exec {real} "$@"\n')
        (shims / program).chmod(0o755)
    path = {"PATH": f"{shims}:{os.environ['PATH']}"}
    run = start(directory, database_url, "migrate", ENVIRONMENT, "--dry-run", "--rehearse", "--json", env=path)
    try:
        run.wait_until(asked.exists, what="faber to look for pg_dump")
        with psycopg.connect(postgres_admin_url, autocommit=True) as catalog:
            catalog.execute("BEGIN")
            catalog.execute("LOCK TABLE pg_catalog.pg_shdescription IN EXCLUSIVE MODE")
            gate.touch()
            copy = run.wait_until(lambda: labelling(postgres_admin_url, database_name(database_url)), what="the label")
            run.kill(signal.SIGTERM)
            # Dropping the copy deletes its label too, so it waits for the catalog as well.
            run.wait_until(
                lambda: not run.running() or drop_waiting(postgres_admin_url, copy),
                what="faber to exit or to drop its copy",
            )
            catalog.execute("ROLLBACK")
        code = run.wait(timeout=EXIT_BOUND)
    finally:
        gate.touch()
        run.stop_everything()

    assert copy not in rehearsal_copies(postgres_admin_url), "the rehearsal copy was left on the server"
    assert code == 130, run.stdout() + run.stderr()
    assert json.loads(run.stdout())["code"] == "INTERRUPTED"


def test_a_rehearsal_copy_killed_before_it_was_labelled_is_named_by_faber_status(
    project, database_url, postgres_admin_url, tmp_path
):
    """``kill -9`` between creating the ``--rehearse`` copy and labelling it (the label is what
    tied a leftover copy to its database) left it unlabelled: never reported, never dropped.
    Its name carries a tag of its database's, by which ``faber status`` names it once stale."""
    directory = project({"001_users": "CREATE TABLE users (id int);"})
    shims, gate, asked = tmp_path / "bin", tmp_path / "gate", tmp_path / "asked"
    shims.mkdir()
    real = shutil.which("pg_dump")
    assert real, "pg_dump is not installed"
    # Asked its version just before faber creates its copy: the catalog is locked only from then.
    wait = f'if [ "$1" = --version ]; then touch {asked}; while [ ! -e {gate} ]; do sleep 0.05; done; fi\n'
    (shims / "pg_dump").write_text(f'#!/bin/sh\n{wait}exec {real} "$@"\n')
    (shims / "pg_dump").chmod(0o755)
    path = {"PATH": f"{shims}:{os.environ['PATH']}"}
    run = start(directory, database_url, "migrate", ENVIRONMENT, "--dry-run", "--rehearse", "--json", env=path)
    stale = None
    try:
        run.wait_until(asked.exists, what="faber to look for pg_dump")
        with psycopg.connect(postgres_admin_url, autocommit=True) as catalog:
            catalog.execute("BEGIN")
            catalog.execute("LOCK TABLE pg_catalog.pg_shdescription IN EXCLUSIVE MODE")
            gate.touch()
            copy = run.wait_until(lambda: labelling(postgres_admin_url, database_name(database_url)), what="the label")
            run.kill(signal.SIGKILL)
            assert run.wait(timeout=EXIT_BOUND) == -signal.SIGKILL
            # The label was never sent: the server ends the dead client's session before it runs.
            # Only this test's: another test's faber may be labelling its copy meanwhile.
            catalog.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'COMMENT ON DATABASE%%'"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND datname = %s",
                [database_name(database_url)],
            )
            catalog.execute("ROLLBACK")
        # As it is 15 minutes on: a copy is named once stale (a preview may still be rehearsing in it).
        stale = "faber_rehearsal_20200101000000_" + copy.removeprefix(REHEARSAL_PREFIX).partition("_")[2]
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            wait_for(lambda: not admin.execute(SESSIONS_ON, [copy]).fetchone(), "the copy's sessions to end")
            admin.execute(f'ALTER DATABASE "{copy}" RENAME TO "{stale}"')
            label = admin.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [stale]
            )
            assert label.fetchall() == [(None,)]

        status = start(directory, database_url, "status", ENVIRONMENT, "--json")
        assert status.finish() == 0, status.stdout()
        leftovers = json.loads(status.stdout())["result"]["leftover_databases"]
        assert [(left["name"], left["left_by"], left["drop"]) for left in leftovers] == [
            (stale, "rehearsal", f'DROP DATABASE "{stale}"')
        ], leftovers
        assert CANARY_PASSWORD not in status.stdout() + status.stderr()
    finally:
        gate.touch()
        run.stop_everything()
        if stale is not None:
            with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{stale}"')


def test_the_next_rehearsal_drops_the_copy_a_run_killed_during_its_rehearsal_left(
    project, database_url, postgres_admin_url
):
    """``kill -9`` during a rehearsal leaves its copy of the database, with its data, on the
    server: ``faber status`` names it once stale, and nothing dropped it. The next rehearsal of
    the database drops it before it makes its own, and says so (an event, a line)."""
    directory = project({"001_slow": "-- faults:rehearsed\nSELECT pg_sleep(60);"})
    target = database_name(database_url)
    run = start(directory, database_url, "migrate", ENVIRONMENT, "--dry-run", "--rehearse", "--json")
    copy = stale = None
    try:
        copy = run.wait_for("rehearsal.created")["data"]["database"]
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            run.wait_until(lambda: migration_session(admin, copy, "rehearsed"), what="the rehearsed migration")
            run.kill(signal.SIGKILL)
            assert run.wait(timeout=EXIT_BOUND) == -signal.SIGKILL
            for database in (copy, target):  # the run's sessions, its lock on the target's among them
                ended = lambda name=database: not admin.execute(SESSIONS_ON, [name]).fetchone()  # noqa: E731
                wait_for(ended, f"the sessions on {database}")
            # As it is 15 minutes on (a preview may still be rehearsing in a younger copy).
            stale = "faber_rehearsal_20200101000000_" + copy.removeprefix(REHEARSAL_PREFIX).partition("_")[2]
            admin.execute(f'ALTER DATABASE "{copy}" RENAME TO "{stale}"')
        status = start(directory, database_url, "status", ENVIRONMENT, "--json")
        assert status.finish() == 0, status.stdout()
        assert [left["name"] for left in json.loads(status.stdout())["result"]["leftover_databases"]] == [stale]

        (directory / "migrations" / "001_slow.sql").write_text("CREATE TABLE later (id int);")
        again = start(directory, database_url, "migrate", ENVIRONMENT, "--dry-run", "--rehearse")
        assert again.finish() == 0, again.stdout() + again.stderr()

        assert stale not in rehearsal_copies(postgres_admin_url), "the killed run's copy is still on the server"
        dropped = [event["data"] for event in again.read_events() if event["kind"] == "rehearsal.leftover_dropped"]
        assert dropped == [{"database": stale, "details": rehearsal_comment(target)}], again.kinds()
        assert f"✓ Dropped {stale}, a rehearsal copy a killed run left" in again.stderr()
        assert CANARY_PASSWORD not in again.stdout() + again.stderr()
    finally:
        run.stop_everything()
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            for name in (copy, stale):
                if name is not None:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


SESSIONS_ON = "SELECT 1 FROM pg_stat_activity WHERE datname = %s"


def labelling(admin_url: str, target: str) -> str | None:
    """The copy of ``target`` whose label (``COMMENT ON DATABASE``) waits for a lock."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT substring(query FROM 'COMMENT ON DATABASE \"(faber_rehearsal_[a-z0-9_]+)\"') FROM pg_stat_activity"
            " WHERE datname = %s AND wait_event_type = 'Lock' AND query LIKE 'COMMENT ON DATABASE%%'",
            [target],
        ).fetchone()
    return row[0] if row else None


# A signal while the run is being recorded ---------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_while_a_finished_deploy_writes_its_history_row_changes_neither_its_result_nor_its_exit(
    project, database_url, signum
):
    """The deploy is done and its document written when its history row is inserted, last: a
    signal there (the insert waits for a lock the test holds on the history table) must not
    turn the finished deploy into an interrupted one, nor print a second document; it is a
    warning that the row may be missing."""
    directory = project({"001_users": "CREATE TABLE users (id int);"})
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE faber.faber_deployments IN EXCLUSIVE MODE")
        run = start(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
        try:
            run.wait_until(lambda: history_insert_waiting(database_url), what="the history row's insert to wait")
            run.kill(signum)
            code = run.wait(timeout=EXIT_BOUND)
        finally:
            holder.execute("ROLLBACK")
            run.stop_everything()

    assert code == 0, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["status"] == "success" and document["result"]["migrations_applied"] == 1, document
    assert f"warning: {signal.Signals(signum).name} arrived while the run was being recorded" in run.stderr()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('users')").fetchone() != (None,)


def history_insert_waiting(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ' AND query LIKE \'INSERT INTO "faber"."faber_deployments"%%\''
        ).fetchone()
    return row is not None


# A second deploy waiting for the lock while the first is killed -----------------------


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_a_deploy_waiting_for_the_lock_of_one_killed_mid_migration_takes_over_and_finishes(
    project, database_url, signum
):
    """A CI job cancelled while the next one already waits for faber's lock (a retry, a second
    pipeline): the waiting deploy gets the lock once the killed run's session is gone, finds the
    migration the kill stopped still pending (its transaction rolled back; restored after
    SIGTERM) and applies everything, once. The killed run's migration session may outlive it by a
    moment (the server notices a dead client at its next check): the waiting deploy's statements
    wait for its locks, they do not fail."""
    held = holdable_migration("001_tier", "ALTER TABLE accounts ADD COLUMN tier int;")
    directory = project({"001_tier": held, "002_ledgers": THIRD}, lock_wait_seconds=60)
    first = start(
        directory,
        database_url,
        "migrate",
        ENVIRONMENT,
        "--yes",
        "--json",
        env=session_settings(hold="001_tier", hold_seconds=60),
    )
    second: FaberProcess | None = None
    try:
        first.wait_for(event_matcher("migration.started", name="001_tier"))
        with psycopg.connect(database_url, autocommit=True) as watcher:
            first.wait_until(lambda: migration_session(watcher, database_name(database_url), "001_tier"), what="001")
        second = start(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
        second.wait_for(event_matcher("step.finished", step="lock"))  # connected: from here it waits
        assert "lock.acquired" not in second.kinds()
        first.kill(signum)
        assert first.wait(EXIT_BOUND) is not None
        code = second.finish(timeout=120)
    finally:
        first.stop_everything()
        if second is not None:
            second.stop_everything()

    assert code == 0, second.stdout() + second.stderr()
    assert json.loads(second.stdout())["result"]["migrations_applied"] == 2
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT name FROM sqlfiles_migrations ORDER BY name").fetchall() == [
            ("000_base",),
            ("001_tier",),
            ("002_ledgers",),
        ]
        assert conn.execute("SELECT count(*) FROM accounts WHERE tier IS NULL").fetchone() == (1000,)
    assert not wait_for_server_release(database_url, database_name(database_url), within=SERVER_BOUND)


# The database unreachable once a restore committed ---------------------------------------


@pytest.mark.parametrize("command", ["rollback", "automatic rollback"])
def test_a_restore_that_committed_before_the_database_became_unreachable_is_reported_restored_not_failed(
    project, database_url, postgres_admin_url, command
):
    """The restore commits; the database then refuses every new connection (a failover, a
    restart, `ALLOW_CONNECTIONS false`) before faber reads the migration history to verify it.
    The database is exactly the backup: the result must say so (`restore_committed`), not that
    the restore failed (the database as before it) or that the database could not be reached at
    all, and point at `faber status` for the check that could not run."""
    failing = holdable_migration("002_notes", "CREATE TABLE notes (id int);")
    directory = project({"001_ledgers": "CREATE TABLE ledgers (id int);", "002_notes": failing})
    name = database_name(database_url)
    if command == "rollback":
        (directory / "migrations" / "002_notes.sql").unlink()
        deploy = start(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
        assert deploy.finish() == 0, deploy.stdout() + deploy.stderr()
        backup_id = json.loads(deploy.stdout())["result"]["backup_id"]
        args, env = ("rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json"), {}
    else:
        args, env = ("migrate", ENVIRONMENT, "--yes", "--json"), session_settings(fail="002_notes")
    with psycopg.connect(database_url, application_name="the application") as application:
        application.execute("LOCK TABLE accounts IN ACCESS SHARE MODE")  # the restore waits for it
        run = start(directory, database_url, *args, env=env)
        try:
            run.wait_until(lambda: restore_waiting(postgres_admin_url, name), what="the restore to wait for its lock")
            with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            application.rollback()
            code = run.finish()
        finally:
            run.stop_everything()
            with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    document = json.loads(run.stdout())
    result = document["result"]
    assert result["rollback_status"] == "success" and result["restore_committed"] is True, document
    if command == "rollback":
        assert code == 0 and result["verified"] is False, document
        assert "the restore committed but was not verified" in document["message"], document
        assert f"faber status {ENVIRONMENT}" in document["message"], document
    else:
        assert (code, document["code"]) == (6, "MIGRATION_FAILED"), document
        assert result["applied_migrations"] == ["001_ledgers"], document
        suggestions = document["recovery"]["suggestions"]
        assert "the restore committed but was not verified" in suggestions[0], suggestions
        assert f"Check that the migrations match the backup's: faber status {ENVIRONMENT}" in suggestions, suggestions
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('ledgers')").fetchone() == (None,)
        assert conn.execute("SELECT name FROM sqlfiles_migrations").fetchall() == [("000_base",)]


def restore_waiting(admin_url: str, database: str) -> bool:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND application_name LIKE 'faber restore %%'"
            " AND wait_event_type = 'Lock'",
            [database],
        ).fetchone()
    return row is not None


# The connection lost as a migration commits ----------------------------------------------


def test_a_migration_whose_connection_is_lost_as_it_commits_is_not_reported_rolled_back(project, database_url):
    """The server runs the migration's COMMIT and the connection drops before its answer arrives
    (a network cut, a proxy restarting): the migration committed, and the handler cannot know. It
    must not be reported as rolled back with "Database unchanged", which would leave its changes
    in place with no restore and no word; it is one that may have committed, as docs/workflow.md
    says of a migration started and not reported applied. The next deploy goes on from there."""
    directory = project({"001_ledgers": "CREATE TABLE ledgers (id int);", "002_notes": "CREATE TABLE notes (id int);"})
    proxy = AnswerDropped.postgres_commit(database_url, application="faber sqlfiles apply")
    try:
        run = start(directory, proxy.url(database_url), "migrate", ENVIRONMENT, "--yes", "--json")
        code = run.finish()
    finally:
        proxy.close()
    assert proxy.dropped.is_set(), run.stderr()
    document = json.loads(run.stdout())
    result = document["result"]
    assert (code, document["code"], result["failed_migration"]) == (6, "MIGRATION_FAILED", "001_ledgers"), document
    assert "transaction_rolled_back" not in result and result["rollback_status"] != "not_needed", document
    assert "Database unchanged" not in json.dumps(document), document
    with psycopg.connect(database_url) as conn:  # the server did commit it
        assert conn.execute("SELECT to_regclass('ledgers')").fetchone() != (None,)

    again = start(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--skip-backup", "--json")
    assert again.finish() == 0, again.stdout() + again.stderr()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT name FROM sqlfiles_migrations ORDER BY name").fetchall() == [
            ("000_base",),
            ("001_ledgers",),
            ("002_notes",),
        ]


def test_a_swap_whose_connection_is_lost_as_it_commits_is_reported_as_the_swap_it_was(project, database_url):
    """A swap restore's COMMIT (the renames, on the maintenance database) runs on the server and
    its answer is lost: the database is the backup, and faber must say so and finish the restore
    (drop the previous database, verify), not report the swap rolled back and the database
    unchanged."""
    directory = project({"001_ledgers": "CREATE TABLE ledgers (id int);"}, backup={"restore_mode": "swap"})
    deploy = start(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert deploy.finish() == 0, deploy.stdout() + deploy.stderr()
    backup_id = json.loads(deploy.stdout())["result"]["backup_id"]
    proxy = AnswerDropped.postgres_commit(database_url, application="faber swap", database="postgres")
    try:
        run = start(directory, proxy.url(database_url), "rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json")
        code = run.finish()
    finally:
        proxy.close()
    assert proxy.dropped.is_set(), run.stderr()
    assert code == 0, run.stdout() + run.stderr()
    result = json.loads(run.stdout())["result"]
    assert (result["rollback_status"], result["verified"]) == ("success", True), result
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT name FROM sqlfiles_migrations").fetchall() == [("000_base",)]
        previous = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = %s", [f"{database_name(database_url)}_faber_previous"]
        ).fetchall()
    assert previous == [], "the database the swap replaced is left behind"
