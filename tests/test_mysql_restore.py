"""The mysqldump provider's restore is atomic: faber killed (SIGKILL or SIGTERM) while the dump
is loading leaves the database exactly as before the restore; the next restore completes and
leaves exactly the backup. States are compared on the real server: every table's definition and
checksum, the views, triggers and routines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faber_core.backup import mysql_dumps, mysqldump
from faber_core.context import open_context
from faber_core.errors import RestoreFailed
from faber_core.models import BackupRecord
from faber_core.testing.faults import AnswerDropped, end_faber_lock_session, mysql_session
from faber_core.testing.fixtures import (
    CANARY_PASSWORD,
    faber_command,
    mysql_connect,
    mysql_scratch_databases,
    start_faber,
    wait_for,
)

SCHEMA = """
CREATE TABLE big (id int PRIMARY KEY, payload varchar(255) NOT NULL);
CREATE TABLE small (id int PRIMARY KEY, name varchar(50) NOT NULL);
CREATE TRIGGER small_upper BEFORE INSERT ON small FOR EACH ROW SET NEW.name = UPPER(NEW.name);
CREATE VIEW small_names AS SELECT name FROM small;
CREATE FUNCTION twice(x int) RETURNS int DETERMINISTIC RETURN x * 2;
INSERT INTO small (id, name) VALUES (1, 'one');
-- A named constraint, as the ORMs name theirs: constraint names are the database's.
CREATE TABLE notes (
    id int PRIMARY KEY, small_id int, CONSTRAINT notes_small_fkey FOREIGN KEY (small_id) REFERENCES small(id)
);
INSERT INTO notes VALUES (1, 1);
"""
CHANGE = (
    "ALTER TABLE small ADD COLUMN note varchar(20); INSERT INTO small VALUES (2, 'two', 'n'); DROP VIEW small_names;"
)
ROWS_DOUBLINGS = 18
"""big gets 2**18 rows of 200 bytes: the dump takes a few seconds to load, long enough to kill faber mid-way."""


def state(admin_url: str, name: str) -> dict:
    """The database as the server has it: what a restore must bring back, or leave alone."""
    with mysql_connect(admin_url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                # faber's own tables (its deployment history) are not the application's: a restore keeps them.
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'"
                " AND TABLE_NAME NOT LIKE 'faber\\_%%' ORDER BY TABLE_NAME",
                [name],
            ).fetchall()
        ]
        return {
            "tables": {
                table: (
                    conn.execute(f"SHOW CREATE TABLE `{name}`.`{table}`").fetchone()[1],
                    conn.execute(f"CHECKSUM TABLE `{name}`.`{table}`").fetchone()[1],
                )
                for table in tables
            },
            "views": conn.execute(
                "SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s ORDER BY 1",
                [name],
            ).fetchall(),
            "triggers": conn.execute(
                "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS"
                " WHERE TRIGGER_SCHEMA = %s ORDER BY 1",
                [name],
            ).fetchall(),
            "routines": conn.execute(
                "SELECT ROUTINE_NAME, ROUTINE_DEFINITION FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s"
                " ORDER BY 1",
                [name],
            ).fetchall(),
        }


def faber(project, url: str, *args: str) -> dict:
    env = {"TEST_DATABASE_URL": url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    done = faber_command(*args, "--json", cwd=project, env=env)
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def backed_up_with_big_table(faber_project, url: str, query) -> tuple[Path, str]:
    """A sqlfiles project on ``url`` whose table ``big`` holds enough rows for a restore to be
    caught loading them, backed up: the project and the backup's id."""
    files = {"migrations/001_schema.sql": SCHEMA}
    env = {"database_url_env": "TEST_DATABASE_URL", "require_approval": False, "lock_wait_seconds": 1}
    project = faber_project({"database": {"migration_tool": "sqlfiles", "environments": {"production": env}}}, files)
    faber(project, url, "migrate", "production")
    query("INSERT INTO big VALUES (1, REPEAT('x', 200))")
    for _ in range(ROWS_DOUBLINGS):
        query("INSERT INTO big SELECT id + (SELECT MAX(id) FROM big), payload FROM big")
    return project, faber(project, url, "backup", "production")["result"]["id"]


def start_rollback(project, backup_id: str, url: str) -> subprocess.Popen:
    """``faber rollback production --to backup_id --yes --json`` of the sqlfiles project on ``url``,
    in the background."""
    return start_faber(
        *("rollback", "production", "--to", backup_id, "--yes", "--json"),
        cwd=project,
        env={"TEST_DATABASE_URL": url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"},
    )


def wait_until_loading_the_dump(admin_url: str, name: str) -> None:
    """Wait until the restore of database ``name`` loads its dump's rows of ``big`` into its
    scratch copy (this database's: other tests restore on the same server at once)."""
    with mysql_connect(admin_url) as conn:
        wait_for(
            lambda: conn.execute(
                "SELECT 1 FROM information_schema.PROCESSLIST WHERE LEFT(DB, %s) = %s"
                " AND INFO LIKE 'INSERT INTO `big`%%'",
                [len(mysql_dumps.scratch_prefix(name)), mysql_dumps.scratch_prefix(name)],
            ).fetchone(),
            "the restore to be loading the dump",
            timeout=60,
        )


@pytest.mark.parametrize(
    "signals",
    [[signal.SIGKILL], [signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM]],
    ids=["SIGKILL", "SIGTERM", "SIGTERM-twice"],
)
def test_a_restore_killed_while_loading_leaves_the_database_as_before_and_the_next_one_restores(
    faber_project, mysql_database_url, mysql_admin_url, mysql_query, signals
):
    name = mysql_database_url.rpartition("/")[2]
    project, backup_id = backed_up_with_big_table(faber_project, mysql_database_url, mysql_query)
    backup_state = state(mysql_admin_url, name)
    (project / "migrations/002_change.sql").write_text(CHANGE)
    faber(project, mysql_database_url, "migrate", "production")
    before = state(mysql_admin_url, name)
    assert before != backup_state

    run = start_rollback(project, backup_id, mysql_database_url)
    try:
        wait_until_loading_the_dump(mysql_admin_url, name)
        run.send_signal(signals[0])
        for again in signals[1:]:
            time.sleep(0.1)  # a CI runner's second SIGTERM, while faber drops the scratch databases
            run.send_signal(again)
        out, err = (stream.decode() for stream in run.communicate(timeout=60))
    finally:
        if run.poll() is None:
            run.kill()
    assert CANARY_PASSWORD not in out + err
    if signals == [signal.SIGKILL]:
        assert run.returncode == -signal.SIGKILL
    else:
        assert run.returncode == 130, out + err
        assert json.loads(out)["result"]["restore_committed"] is False, out

    assert state(mysql_admin_url, name) == before  # not a row, column, view or trigger changed

    faber(project, mysql_database_url, "rollback", "production", "--to", backup_id, "--yes")
    assert state(mysql_admin_url, name) == backup_state
    assert mysql_query("SELECT name FROM small_names") == [("ONE",)]
    assert mysql_query("SELECT twice(21)") == [(42,)]
    assert not mysql_scratch_databases(mysql_admin_url, name)


def test_a_restore_whose_lock_is_lost_while_loading_stops_before_its_table_swap(
    faber_project, mysql_database_url, mysql_admin_url, mysql_query
):
    """faber's lock session killed while the dump loads beside the database (an operator's KILL, a
    proxy timeout): another run may hold the lock by the time the load ends, so the table swap must
    not happen. The rollback stops with LOCKED (exit 7), restore_committed false, the database
    exactly as before and no scratch database left."""
    name = mysql_database_url.rpartition("/")[2]
    project, backup_id = backed_up_with_big_table(faber_project, mysql_database_url, mysql_query)
    (project / "migrations/002_change.sql").write_text(CHANGE)
    faber(project, mysql_database_url, "migrate", "production")
    before = state(mysql_admin_url, name)

    run = start_rollback(project, backup_id, mysql_database_url)
    try:
        wait_until_loading_the_dump(mysql_admin_url, name)
        with mysql_connect(mysql_database_url) as conn:
            end_faber_lock_session(conn)
        out, err = (stream.decode() for stream in run.communicate(timeout=120))
    finally:
        if run.poll() is None:
            run.kill()
    assert CANARY_PASSWORD not in out + err
    assert "Traceback" not in err
    document = json.loads(out)
    assert (run.returncode, document["code"]) == (7, "LOCKED"), out + err
    assert "the restore stopped before it committed" in document["error"], document
    assert (document["result"]["rollback_status"], document["result"]["restore_committed"]) == ("failed", False)
    assert state(mysql_admin_url, name) == before  # not a row, column, view or trigger changed
    assert not mysql_scratch_databases(mysql_admin_url, name)


def test_a_backup_whose_manifest_has_no_checksum_is_never_restored(
    faber_project, mysql_database_url, mysql_admin_url, monkeypatch
):
    name = mysql_database_url.rpartition("/")[2]
    env = {"database_url_env": "TEST_DATABASE_URL", "require_approval": False, "lock_wait_seconds": 1}
    files = {"migrations/001_schema.sql": "CREATE TABLE small (id int PRIMARY KEY);"}
    project = faber_project({"database": {"migration_tool": "sqlfiles", "environments": {"production": env}}}, files)
    faber(project, mysql_database_url, "migrate", "production")
    backup_id = faber(project, mysql_database_url, "backup", "production")["result"]["id"]
    manifest = project / f".faber/backups/production/{backup_id}.json"
    record = BackupRecord.model_validate_json(manifest.read_text()).model_copy(update={"sha256": None})
    manifest.write_text(record.model_dump_json())
    (project / "migrations/002_change.sql").write_text(CHANGE.split(";")[0] + ";")
    faber(project, mysql_database_url, "migrate", "production")
    before = state(mysql_admin_url, name)

    refused = subprocess.run(
        [sys.executable, "-m", "faber_core", "rollback", "production", "--to", backup_id, "--yes", "--json"],
        cwd=project,
        env={**os.environ, "TEST_DATABASE_URL": mysql_database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"},
        capture_output=True,
        text=True,
    )
    monkeypatch.setenv("TEST_DATABASE_URL", mysql_database_url)
    with pytest.raises(RestoreFailed) as direct:
        mysqldump.faber_backup_restore(context=open_context(project, "production", "rollback"), backup=record)

    document = json.loads(refused.stdout)
    assert (refused.returncode, document["code"]) == (2, "CONFIG_INVALID"), refused.stdout + refused.stderr
    assert "has no sha256 checksum" in document["error"]
    assert "cannot be verified" in direct.value.message
    assert state(mysql_admin_url, name) == before


def test_a_restore_whose_connection_is_lost_as_its_table_swap_runs_is_finished_and_reported_restored(
    faber_project, mysql_database_url, mysql_admin_url, mysql_query
):
    """The server runs the restore's one RENAME TABLE and the connection drops before its answer
    (a network cut, a proxy restarting): the tables are the backup's, the backup's views and
    triggers not yet created. faber must finish the swap from its journal on a new connection and
    report the restore done, not "stopped" with no word of which side the database is on."""
    name = mysql_database_url.rpartition("/")[2]
    env = {"database_url_env": "TEST_DATABASE_URL", "require_approval": False, "lock_wait_seconds": 1}
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": env}}},
        {"migrations/001_schema.sql": SCHEMA},
    )
    faber(project, mysql_database_url, "migrate", "production")
    backup_state = state(mysql_admin_url, name)
    (project / "migrations/002_change.sql").write_text(CHANGE)
    backup_id = faber(project, mysql_database_url, "migrate", "production")["result"]["backup_id"]

    proxy = AnswerDropped.mysql_statement(mysql_database_url, program="faber restore", statement_start="RENAME TABLE ")
    try:
        document = faber(project, proxy.url(mysql_database_url), "rollback", "production", "--to", backup_id, "--yes")
    finally:
        proxy.close()
    assert proxy.dropped.is_set()
    assert (document["result"]["rollback_status"], document["result"]["verified"]) == ("success", True), document
    assert state(mysql_admin_url, name) == backup_state
    assert mysql_query("SELECT name FROM small_names") == [("ONE",)]
    assert not mysql_scratch_databases(mysql_admin_url, name)


def test_a_restore_whose_session_is_killed_before_its_swap_says_so_and_to_run_it_again(
    faber_project, mysql_database_url, mysql_admin_url, mysql_query
):
    """An administrator's ``KILL`` of the restore's session (or a server ending it) stops the
    restore before its table swap: the database is unchanged, and the advice is that the session
    ended and to run the restore again. It was to grant privileges on the scratch databases,
    which the restore had, and had used."""
    name = mysql_database_url.rpartition("/")[2]
    env = {"database_url_env": "TEST_DATABASE_URL", "require_approval": False, "lock_wait_seconds": 1}
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": env}}},
        {"migrations/001_schema.sql": SCHEMA},
    )
    faber(project, mysql_database_url, "migrate", "production")
    (project / "migrations/002_change.sql").write_text(CHANGE)
    backup_id = faber(project, mysql_database_url, "migrate", "production")["result"]["backup_id"]
    before = state(mysql_admin_url, name)

    with mysql_connect(mysql_admin_url) as holder:
        # A transaction reading `small` holds the table: the swap waits for it as it drops the
        # table's trigger, the restore's session busy there, the dump loaded beside the database.
        holder.execute("BEGIN")
        holder.execute(f"SELECT * FROM `{name}`.small FOR UPDATE").fetchall()
        run = start_rollback(project, backup_id, mysql_database_url)
        try:
            session = wait_for(
                lambda: mysql_session(mysql_admin_url, "INFO LIKE %s", [f"DROP TRIGGER `{name}`.%"]),
                "the restore's session to wait in its swap",
            )
            holder.execute(f"KILL {session[0]}")
            holder.execute("ROLLBACK")
            out, err = (stream.decode() for stream in run.communicate(timeout=60))
        finally:
            if run.poll() is None:
                run.kill()

    assert CANARY_PASSWORD not in out + err
    document = json.loads(out)
    assert run.returncode == 8 and document["code"] == "RESTORE_FAILED", out + err
    assert (
        "its session on the server ended" in document["error"] and "the database is unchanged" in document["error"]
    ), document
    advice = " ".join(document["recovery"]["suggestions"])
    assert "GRANT" not in advice and f"faber rollback production --to {backup_id}" in advice, document
    assert state(mysql_admin_url, name) == before
    assert not mysql_scratch_databases(mysql_admin_url, name)


def deployed_twice(faber_project, url: str, *, query_lock_timeout_seconds: int) -> tuple[Path, str]:
    """A project with :data:`SCHEMA` deployed, then a change to ``small`` deployed: the project and
    the backup the second deploy took (``small`` without its ``note`` column)."""
    env = {
        "database_url_env": "TEST_DATABASE_URL",
        "require_approval": False,
        "lock_wait_seconds": 1,
        "query_lock_timeout_seconds": query_lock_timeout_seconds,
    }
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": env}}},
        {"migrations/001_schema.sql": SCHEMA},
    )
    faber(project, url, "migrate", "production")
    (project / "migrations/002_change.sql").write_text(
        "ALTER TABLE small ADD COLUMN note varchar(20); INSERT INTO small VALUES (2, 'two', 'n');"
    )
    return project, faber(project, url, "migrate", "production")["result"]["backup_id"]


@pytest.mark.parametrize(
    ("held", "waiting"),
    [("small", "DROP TRIGGER"), ("notes", "RENAME TABLE")],
    ids=["the-trigger-s-table", "a-table-without-triggers"],
)
def test_a_swap_that_waits_past_the_lock_timeout_leaves_the_database_exactly_as_before(
    faber_project, mysql_database_url, mysql_admin_url, mysql_query, held, waiting
):
    """An application's transaction holds a table (reading it keeps its metadata lock) for the
    whole restore: the swap waits for it, as it drops the table's trigger or in its RENAME TABLE,
    past the lock timeout, and fails before any table moved. The database must be exactly as before
    the restore while that transaction is still open, its view and trigger included, with no
    journal to finish and no scratch database left, and the result must say nothing committed."""
    name = mysql_database_url.rpartition("/")[2]
    project, backup_id = deployed_twice(faber_project, mysql_database_url, query_lock_timeout_seconds=1)
    before = state(mysql_admin_url, name)

    with mysql_connect(mysql_admin_url) as application:
        application.execute("BEGIN")
        application.execute(f"SELECT * FROM `{name}`.{held}").fetchall()
        run = start_rollback(project, backup_id, mysql_database_url)
        try:
            wait_for(
                lambda: mysql_session(
                    mysql_admin_url,
                    "INFO LIKE %s AND STATE LIKE 'Waiting for table metadata lock%%'",
                    [f"{waiting} %{name}%"],
                ),
                f"the restore's {waiting} to wait for the application's table",
            )
            out, err = (stream.decode() for stream in run.communicate(timeout=60))
        finally:
            if run.poll() is None:
                run.kill()
        during = state(mysql_admin_url, name)
        view = mysql_query("SELECT name FROM small_names ORDER BY name")
        application.execute("ROLLBACK")

    assert CANARY_PASSWORD not in out + err
    document = json.loads(out)
    assert (run.returncode, document["code"]) == (8, "RESTORE_FAILED"), out + err
    assert "changed nothing" in document["error"], document
    assert (document["result"]["rollback_status"], document["result"]["restore_committed"]) == ("failed", False)
    assert during == before  # not a row, column, view or trigger changed
    assert view == [("ONE",), ("TWO",)]
    assert not mysql_query(
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
        [mysqldump.JOURNAL],
    )
    assert not mysql_scratch_databases(mysql_admin_url, name)
    assert not faber(project, mysql_database_url, "status", "production")["result"]["interrupted_restores"]


def test_a_trigger_the_failed_swap_cannot_put_back_is_put_back_by_the_next_run(
    faber_project, mysql_database_url, mysql_admin_url, mysql_query
):
    """The swap dropped ``small``'s trigger, its RENAME TABLE waits for ``notes`` past the lock
    timeout, and meanwhile a second transaction took ``small``: putting the trigger back waits for
    it and fails too. The error must say exactly that (no table moved, the trigger not back yet),
    the journal must stay, with the scratch databases it tells the side by, and the next
    ``faber migrate`` must put the trigger back, leaving the database exactly as before."""
    name = mysql_database_url.rpartition("/")[2]
    project, backup_id = deployed_twice(faber_project, mysql_database_url, query_lock_timeout_seconds=2)
    before = state(mysql_admin_url, name)

    with mysql_connect(mysql_admin_url) as holding_notes, mysql_connect(mysql_admin_url) as holding_small:
        holding_notes.execute("BEGIN")
        holding_notes.execute(f"SELECT * FROM `{name}`.notes").fetchall()
        run = start_rollback(project, backup_id, mysql_database_url)
        try:
            wait_for(
                lambda: mysql_session(
                    mysql_admin_url,
                    "INFO LIKE %s AND STATE LIKE 'Waiting for table metadata lock%%'",
                    [f"RENAME TABLE %{name}%"],
                ),
                "the restore's RENAME TABLE to wait for the application's table",
            )
            holding_small.execute("BEGIN")
            holding_small.execute(f"SELECT * FROM `{name}`.small").fetchall()
            out, err = (stream.decode() for stream in run.communicate(timeout=60))
        finally:
            if run.poll() is None:
                run.kill()
        holding_small.execute("ROLLBACK")
        holding_notes.execute("ROLLBACK")

    assert CANARY_PASSWORD not in out + err
    document = json.loads(out)
    assert (run.returncode, document["code"]) == (8, "RESTORE_FAILED"), out + err
    assert "moved none of them" in document["error"] and "small_upper" in document["error"], document
    assert (document["result"]["rollback_status"], document["result"]["restore_committed"]) == ("failed", False)
    left = state(mysql_admin_url, name)
    assert (left["tables"], left["views"], left["routines"]) == (before["tables"], before["views"], before["routines"])
    assert [trigger for trigger, *_ in left["triggers"]] == []
    assert faber(project, mysql_database_url, "status", "production")["result"]["interrupted_restores"]

    faber(project, mysql_database_url, "migrate", "production")
    assert state(mysql_admin_url, name) == before
    assert not mysql_scratch_databases(mysql_admin_url, name)
