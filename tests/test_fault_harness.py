"""The fault-injection harness itself: a sweep that passes proves something only if the harness
sees what a dead faber can leave behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import psycopg

from faber_core.testing.faults import FaberProcess, holdable_migration, server_leftovers, snapshot


def test_snapshot_sees_rows_constraints_and_invalid_indexes(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 10) g")
        conn.execute("CREATE SCHEMA faber")
        conn.execute("CREATE TABLE faber.runs (id int)")
        before = snapshot(database_url)
        assert snapshot(database_url) == before
        conn.execute("INSERT INTO faber.runs VALUES (1)")
        assert snapshot(database_url) == before, "faber's own schema is not part of the state"

        conn.execute("DELETE FROM t WHERE id = 10")
        fewer = snapshot(database_url)
        assert fewer != before and any("row counts" in d for d in fewer.differences(before))
        conn.execute("INSERT INTO t VALUES (10, 10)")
        assert snapshot(database_url) == before

        conn.execute("ALTER TABLE t DROP CONSTRAINT t_pkey")
        unkeyed = snapshot(database_url)
        assert any("constraints" in d for d in unkeyed.differences(before))
        conn.execute("ALTER TABLE t ADD PRIMARY KEY (id)")
        assert snapshot(database_url) == before

        conn.execute("CREATE INDEX t_v_idx ON t (v)")
        valid = snapshot(database_url)
        conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 't_v_idx'::regclass")
        assert snapshot(database_url) != valid, "an invalid index is a different state"


def test_leftovers_are_sessions_and_advisory_locks_on_the_database(database_url):
    database = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(database_url, autocommit=True, application_name="stray") as stray:
        stray.execute("SELECT pg_advisory_lock(42)")
        found = server_leftovers(database_url, database)
        assert [s[1] for s in found.sessions] == ["stray"] and len(found.advisory_locks) == 1
        assert not server_leftovers(database_url, database, ignore_pids=[stray.info.backend_pid])
    assert not server_leftovers(database_url, database)


def test_a_child_that_outlives_a_killed_parent_is_found(tmp_path):
    parent = FaberProcess.spawn(
        tmp_path,
        [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"],
    )
    try:
        parent.wait_until(lambda: parent_has_child(parent), what="the child started")
        parent.kill(signal.SIGKILL)
        assert parent.wait(5) == -signal.SIGKILL
        survivors = parent.surviving_children(within=0.5)
        assert [s.command for s in survivors] == ["sleep 30"]
    finally:
        parent.stop_everything()
    assert not parent.surviving_children(within=2)


def test_a_session_of_faber_s_number_started_after_it_ended_is_not_its_leftover(tmp_path):
    """CI starts more processes than there are pids: once faber has ended, another test's faber may
    get its pid and lead a session of that number. Before, the first test's cleanup took it for
    what its faber left and killed it (SIGKILL, no document: CI saw it as that test's failure)."""
    ended = FaberProcess.spawn(tmp_path, [sys.executable, "-c", "pass"])
    assert ended.wait(30) == 0
    time.sleep(0.1)  # later than the end, in /proc's start times (clock ticks)
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        ended.proc.pid = other.pid  # the pid come round to the other session's leader
        assert ended.surviving_children(within=0) == []
        ended.stop_everything()
        assert other.poll() is None, "the other session's leader was killed"
    finally:
        other.kill()
        other.wait()


def parent_has_child(parent: FaberProcess) -> bool:
    from faber_core.testing.faults import descendants

    return bool(descendants(parent.pid))


def test_a_held_migration_is_plain_sql_unless_held_or_failed(database_url):
    sql = holdable_migration("001_x", "CREATE TABLE x (id int);")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql)
        assert conn.execute("SELECT to_regclass('x')").fetchone()[0] == "x"
    with psycopg.connect(database_url, autocommit=True, options="-c faults.fail=001_x") as conn:
        try:
            conn.execute(sql.replace("CREATE TABLE x", "CREATE TABLE y"))
        except psycopg.errors.RaiseException as exc:
            assert "injected failure in 001_x" in str(exc)
        else:
            raise AssertionError("faults.fail did not fail the migration")
