"""``restore_mode: swap`` on a real PostgreSQL: pg_restore -j into a new database, then a swap by rename.

Kill tests stop faber at three real moments and compare the databases with what they must be:

- during ``pg_restore -j``: the archive holds a table with an index on ``gate(id)``, which waits
  while a session of the test's own name exists, in the database being restored only;
- between copying faber's schema and the swap: the test holds a lock on the target database
  (an open ``COMMENT ON DATABASE``), which the rename waits for;
- after the swap, before the previous database is dropped: the same gate, now in the target's
  name, holds the ANALYZE of the restored tables.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from faber_core import api, workflow
from faber_core.backup import database_properties
from faber_core.backup import swap as swap_module
from faber_core.backup.swap import previous_name, restoring_name
from faber_core.context import open_context
from faber_core.errors import LockLost, RestoreFailed
from faber_core.events import BACKUP_RESTORE_STEP, WRITES_WAITING
from faber_core.interrupts import Terminated
from faber_core.plugins import Plugins
from faber_core.postgres.locks import faber_lock_key
from faber_core.testing import sqlfiles
from faber_core.testing.faults import FaberProcess, end_faber_lock_session
from faber_core.testing.fixtures import (
    CANARY_PASSWORD,
    FaberRun,
    database_state,
    database_url_for,
    discard_database,
    faber_command,
    start_faber,
    wait_for,
)

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
SWAP = {"backup": {"provider": "pg_dump", "restore_mode": "swap", "jobs": 2}}


def execute(url: str, script: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script)


def name_of(url: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(url)["dbname"]


def admin_execute(admin_url: str, statement: sql.Composable | str, params: list | None = None) -> list:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def databases(admin_url: str, target: str) -> dict[str, int]:
    """The target and the two databases a swap uses, by name, with their oids."""
    names = [target, restoring_name(target), previous_name(target)]
    return dict(admin_execute(admin_url, "SELECT datname, oid::int FROM pg_database WHERE datname = ANY(%s)", [names]))


def drop_swap_databases(admin_url: str, target: str) -> None:
    for name in (restoring_name(target), previous_name(target)):
        admin_execute(admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def swapped(project, database_url, postgres_admin_url, run_faber):
    """``(project_dir, target name)`` of a project restoring in swap mode; drops the swap's databases after."""
    project_dir = project({}, **SWAP)
    target = name_of(database_url)
    yield project_dir, target
    drop_swap_databases(postgres_admin_url, target)


def backup(run_faber, project_dir) -> str:
    done = run_faber("backup", "production", "--json", cwd=project_dir, env=SQLFILES)
    assert done.returncode == 0, done.stdout
    return done.json["result"]["id"]


def rollback(run_faber, project_dir, backup_id: str):
    return run_faber(
        *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
        cwd=project_dir,
        env=SQLFILES,
    )


def faber_rows(url: str) -> list:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT c.relname, (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM faber.%I',"
            " c.relname), false, true, '')))[1]::text::int FROM pg_class c JOIN pg_namespace n ON n.oid ="
            " c.relnamespace WHERE n.nspname = 'faber' AND c.relkind = 'r' ORDER BY 1"
        ).fetchall()


def test_a_swap_restore_brings_back_the_backup_and_keeps_faber_history(
    project, run_faber, database_url, postgres_admin_url
):
    # A deploy (backed up first) that faber records in its history, in faber's schema.
    project_dir = project({"001_orders": "CREATE TABLE orders (id int PRIMARY KEY, account int);"}, **SWAP)
    target = name_of(database_url)
    execute(
        database_url,
        "CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL);"
        "INSERT INTO accounts SELECT g, 'user' || g FROM generate_series(1, 5000) g;"
        "CREATE INDEX ON accounts (email);",
    )
    admin_execute(
        postgres_admin_url,
        sql.SQL("COMMENT ON DATABASE {} IS 'the shop'; ALTER DATABASE {} CONNECTION LIMIT 40").format(
            sql.Identifier(target), sql.Identifier(target)
        ),
    )
    at_backup = database_state(database_url)
    deployed = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=SQLFILES)
    assert deployed.returncode == 0, deployed.stdout
    backup_id = deployed.json["result"]["backup_id"]
    execute(database_url, "DELETE FROM accounts WHERE id > 10; INSERT INTO orders VALUES (1, 1)")
    before = databases(postgres_admin_url, target)

    done = rollback(run_faber, project_dir, backup_id)

    assert done.returncode == 0, done.stdout
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    assert database_state(database_url) == at_backup
    after = databases(postgres_admin_url, target)
    assert list(after) == [target] and after[target] != before[target]  # swapped, nothing left behind
    assert admin_execute(
        postgres_admin_url,
        "SELECT shobj_description(oid, 'pg_database'), datconnlimit FROM pg_database WHERE datname = %s",
        [target],
    ) == [("the shop", 40)]
    # faber's history came over with the swap: it records the deploy, then this rollback.
    history = run_faber("history", "production", "--json", cwd=project_dir, env=SQLFILES)
    assert history.returncode == 0, history.stdout
    assert [run["operation"] for run in history.json["result"]["deployments"]] == ["rollback", "deploy-migrations"]


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("ALTER DATABASE {} SET work_mem = '8MB'", "settings of its own"),
        ("GRANT CONNECT ON DATABASE {} TO PUBLIC", "grants of its own"),
    ],
    ids=["settings", "grants"],
)
def test_a_swap_of_an_older_faber_s_backup_that_would_lose_what_lives_on_the_database_is_refused(
    swapped, run_faber, database_url, postgres_admin_url, setting, reason
):
    """A backup taken by an older faber does not record the database's settings and grants
    (tests/test_database_properties.py): a new database could not be given them."""
    project_dir, target = swapped
    execute(database_url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
    backup_id = backup(run_faber, project_dir)
    manifest = project_dir / ".faber" / "backups" / "production" / f"{backup_id}.json"
    document = json.loads(manifest.read_text())
    del document["provider_data"][database_properties.RECORD], document["private_data"][database_properties.RECORD]
    manifest.write_text(json.dumps(document))
    execute(database_url, "INSERT INTO accounts VALUES (2)")
    admin_execute(postgres_admin_url, sql.SQL(setting).format(sql.Identifier(target)))
    before = database_state(database_url)

    done = rollback(run_faber, project_dir, backup_id)

    assert done.returncode != 0
    assert reason in done.json["error"] and "in-place" in " ".join(done.json["recovery"]["suggestions"])
    assert database_state(database_url) == before
    assert list(databases(postgres_admin_url, target)) == [target]


def test_a_user_without_createdb_is_refused_before_anything_changes(
    project, run_faber, database_url, postgres_admin_url, monkeypatch
):
    """Refused at the backup a swap could not restore (a deploy stops there, before its migrations),
    and at the restore of a backup taken while the user still had the privilege."""
    role = f"faber_nocreatedb_{uuid.uuid4().hex[:8]}"
    target = name_of(database_url)
    admin_execute(
        postgres_admin_url,
        sql.SQL("CREATE ROLE {} LOGIN CREATEDB; ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(role), sql.Identifier(target), sql.Identifier(role)
        ),
    )
    try:
        url = database_url.replace("://postgres:", f"://{role}:")
        monkeypatch.setenv("TEST_DATABASE_URL", url)
        project_dir = project({}, **SWAP)
        execute(url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
        backup_id = backup(run_faber, project_dir)
        admin_execute(postgres_admin_url, sql.SQL("ALTER ROLE {} NOCREATEDB").format(sql.Identifier(role)))
        execute(url, "INSERT INTO accounts VALUES (2)")

        refused_backup = run_faber("backup", "production", "--json", cwd=project_dir, env=SQLFILES)
        done = rollback(run_faber, project_dir, backup_id)

        assert (refused_backup.returncode, refused_backup.json["code"]) == (4, "BACKUP_FAILED"), refused_backup.output
        assert f"the user {role} lacks the CREATEDB privilege" in refused_backup.json["error"]
        assert any("in-place" in s for s in refused_backup.json["recovery"]["suggestions"])
        assert done.returncode != 0
        assert "CREATEDB" in done.json["error"]
        assert CANARY_PASSWORD not in done.stdout + done.stderr + refused_backup.output
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT id FROM accounts ORDER BY 1").fetchall() == [(1,), (2,)]
        listed = run_faber("backups", "production", "--json", cwd=project_dir, env=SQLFILES)
        assert [b["id"] for b in listed.json["result"]["backups"]] == [backup_id], listed.output  # no other taken
    finally:
        as_admin = database_url_for(postgres_admin_url, target)
        admin_execute(as_admin, sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(role)))
        admin_execute(postgres_admin_url, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def application_tables(database_url: str, gated_in: str) -> str:
    """The application's ``accounts`` (3000 rows), and ``zz_gated``, whose index calls
    :func:`gate_function` for database ``gated_in``; the name of the session that holds the gate."""
    holder = f"test-gate-{uuid.uuid4().hex[:8]}"  # not faber-named: faber takes those sessions for its own
    execute(
        database_url,
        gate_function(holder)
        + f"""
        CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL);
        INSERT INTO accounts SELECT g, 'user' || g FROM generate_series(1, 3000) g;
        CREATE TABLE zz_gated (id int);
        INSERT INTO zz_gated VALUES (1), (2);
        CREATE INDEX zz_gated_gate ON zz_gated ((public.gate(id, '{gated_in}')));
        """,
    )
    return holder


def gate_function(holder: str) -> str:
    """``gate(id, only_in)``: true; in the database named ``only_in``, only once no session named
    ``holder`` exists (the test holds one open while it kills faber)."""
    return f"""
        CREATE FUNCTION gate(id int, only_in text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
            WHILE current_database() = only_in
                  AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = '{holder}') LOOP
                PERFORM pg_stat_clear_snapshot();
                PERFORM pg_sleep(0.05);
            END LOOP;
            RETURN true;
        END $$;
    """


def sessions_waiting(admin_url: str, database: str, wait_event: str) -> bool:
    return bool(
        admin_execute(
            admin_url,
            "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND wait_event = %s",
            [database, wait_event],
        )
    )


def swap_waiting_for_lock(admin_url: str, target: str) -> bool:
    """Whether the swap of ``target`` (not another test's) waits for a lock to rename it."""
    return bool(
        admin_execute(
            admin_url,
            "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'faber swap %%' AND wait_event_type = 'Lock'"
            " AND query LIKE 'ALTER DATABASE%%RENAME%%' AND query LIKE %s",
            [f'%"{target}" RENAME%'],
        )
    )


CHANGE_DATABASE_PROPERTIES = """
DO $change$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET work_mem = ''64MB''', current_database());
    EXECUTE format('COMMENT ON DATABASE %I IS ''changed since the backup''', current_database());
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END $change$;
"""
"""A change, since the backup, of what lives on the database (which database_state compares): the
swap gives the restored database the backup's, and leaves the target's when stopped before it."""


# The kill during pg_restore -j (the gate in the restoring copy) is in
# test_a_kill_before_the_swap_leaves_the_target_as_it_was_and_the_next_rollback_converges, with
# this test's assertions for it (pg_restore's workers stop, the target as it was, no copy left
# after SIGTERM, restore_committed false, the next rollback converges) and two more signals.
MOMENTS = ["before_swap", "after_swap"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
@pytest.mark.parametrize("moment", MOMENTS)
def test_a_kill_at_each_moment_of_a_swap_leaves_one_side_and_the_next_rollback_converges(
    swapped, run_faber, database_url, postgres_admin_url, moment, signum
):
    project_dir, target = swapped
    gated_in = target if moment == "after_swap" else "none"
    holder = application_tables(database_url, gated_in)
    backup_id = backup(run_faber, project_dir)
    at_backup = database_state(database_url)
    history_at_backup = faber_rows(database_url)
    execute(database_url, "DELETE FROM accounts WHERE id > 100; CREATE TABLE since_backup (note text)")
    execute(database_url, CHANGE_DATABASE_PROPERTIES)
    before = database_state(database_url)
    oid_before = databases(postgres_admin_url, target)[target]

    with psycopg.connect(postgres_admin_url, autocommit=True, application_name=holder) as gate:
        if moment == "before_swap":
            gate.execute("BEGIN")
            gate.execute(sql.SQL("COMMENT ON DATABASE {} IS 'held by the test'").format(sql.Identifier(target)))
        faber = start_faber(
            *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
            cwd=project_dir,
            env=SQLFILES,
        )
        try:
            if moment == "before_swap":
                wait_for(
                    lambda: swap_waiting_for_lock(postgres_admin_url, target), "the swap to wait for the test's lock"
                )
            else:
                wait_for(lambda: sessions_waiting(postgres_admin_url, gated_in, "PgSleep"), f"the gate in {gated_in}")
            faber.send_signal(signum)
            faber.wait(timeout=60)
        finally:
            if faber.poll() is None:
                faber.kill()
            out, err = faber.communicate()
            if moment == "before_swap":
                gate.execute("ROLLBACK")
    assert faber.returncode != 0
    assert CANARY_PASSWORD not in (out + err).decode()
    present = databases(postgres_admin_url, target)
    swapped_in = present[target] != oid_before
    if moment == "after_swap":
        # The swap had committed: the target is exactly the backup, with faber's history.
        assert swapped_in
        assert database_state(database_url) == at_backup
        # faber's own rows came over (and this run recorded itself after the swap).
        kept = dict(faber_rows(database_url))
        assert all(kept.get(table, 0) >= count for table, count in history_at_backup)
    else:
        assert not swapped_in
        assert database_state(database_url) == before
    if signum == signal.SIGTERM:
        result = faber_json(out)
        expected = {"after_swap": True}.get(moment, False)
        assert result["result"]["restore_committed"] is expected
        if moment == "after_swap":  # the previous database is kept, named with the command that drops it
            advice = result["recovery"]["suggestions"][0]
            assert previous_name(target) in advice and "DROP DATABASE" in advice
            # The rows deleted since the backup are back: the document says the restore discarded that write.
            since = result["result"]["writes_since_backup"]
            assert since["status"] == "found" and "public.accounts" in [t["table"] for t in since["tables"]], since
        else:
            assert list(present) == [target]

    # Whatever the kill left, the next rollback restores and leaves nothing behind.
    next_rollback_converges(run_faber, project_dir, backup_id, postgres_admin_url, database_url, at_backup)


def stopped_before_the_swap(run: FaberProcess, code: int | None, admin_url: str, url: str, before: dict) -> list[str]:
    """faber, killed before its swap, failed and left the target ``before``; the swap's databases left."""
    assert code is not None and code != 0
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    assert database_state(url) == before
    target = name_of(url)
    return [name for name in databases(admin_url, target) if name != target]


def next_rollback_converges(run_faber, project_dir, backup_id: str, admin_url: str, url: str, at_backup: dict) -> None:
    """Whatever a kill left, the next rollback restores the backup and leaves nothing behind."""
    done = rollback(run_faber, project_dir, backup_id)
    assert done.returncode == 0, done.stdout
    assert database_state(url) == at_backup
    target = name_of(url)
    assert list(databases(admin_url, target)) == [target]


def faber_json(stdout: bytes) -> dict:
    return json.loads(stdout)


def test_a_failed_deploy_rolls_back_by_swap(project, run_faber, database_url, postgres_admin_url):
    project_dir = project(
        {
            "001_orders": "CREATE TABLE orders (id int PRIMARY KEY);",
            "002_broken": "INSERT INTO orders VALUES (1); SELECT 1/0;",
        },
        **SWAP,
    )
    target = name_of(database_url)
    execute(database_url, "CREATE TABLE accounts (id int PRIMARY KEY); INSERT INTO accounts VALUES (1), (2)")
    before = database_state(database_url)
    oid_before = databases(postgres_admin_url, target)[target]

    deployed = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=SQLFILES)

    assert deployed.returncode != 0
    assert deployed.json["result"]["rollback_status"] == "success", deployed.stdout
    assert database_state(database_url) == before
    assert list(databases(postgres_admin_url, target)) == [target]
    assert databases(postgres_admin_url, target)[target] != oid_before
    assert CANARY_PASSWORD not in deployed.stdout + deployed.stderr


def test_an_event_trigger_in_the_archive_does_not_fire_on_faber_schema(swapped, run_faber, database_url):
    project_dir, target = swapped
    backup(run_faber, project_dir)  # faber's schema exists before the trigger does
    execute(
        database_url,
        f"""
        CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1);
        CREATE FUNCTION no_ddl_elsewhere() RETURNS event_trigger LANGUAGE plpgsql AS $$
            BEGIN IF current_database() <> '{target}' THEN RAISE EXCEPTION 'no DDL here'; END IF; END $$;
        CREATE EVENT TRIGGER no_ddl_elsewhere ON ddl_command_start EXECUTE FUNCTION no_ddl_elsewhere();
        """,
    )
    backup_id = backup(run_faber, project_dir)
    at_backup = database_state(database_url)
    execute(database_url, "INSERT INTO accounts VALUES (2)")

    done = rollback(run_faber, project_dir, backup_id)

    assert done.returncode == 0, done.stdout
    assert database_state(database_url) == at_backup


def swap_with_application_writing(project_dir, target: str, holder: str, admin_url: str, database_url: str, *args: str):
    """Run faber ``args`` while ``pg_restore`` of a swap waits at the gate of
    :func:`application_tables` (``holder`` holds it), the application inserting a row into
    ``accounts`` meanwhile; the exit code, the JSON document and all output."""
    with psycopg.connect(admin_url, autocommit=True, application_name=holder):
        run = FaberProcess.start(project_dir, *args, env=SQLFILES)
        try:
            run.wait_for(lambda e: e["kind"] == BACKUP_RESTORE_STEP and e["data"]["step"].startswith("created "))
            run.wait_until(
                lambda: sessions_waiting(admin_url, restoring_name(target), "PgSleep"), what="pg_restore at the gate"
            )
            with psycopg.connect(database_url, autocommit=True, application_name="shop") as shop:
                shop.execute("INSERT INTO accounts VALUES (100001, 'written during the restore')")
        except BaseException:
            run.stop_everything()
            raise
    try:
        code = run.finish()
    finally:
        run.stop_everything()
    return code, json.loads(run.stdout()), run.stdout() + run.stderr()


def stopped_by_one_row(document: dict, output: str, database_url: str, admin_url: str, target: str, rows_left: int):
    """The swap rollback refused over the application's row 100001 in ``accounts``, which is still
    there with ``rows_left`` rows in all; the restored copy is gone."""
    assert document["code"] == "APPROVAL_REQUIRED"
    assert "accounts (1 row)" in document["error"] and "unchanged" in document["error"]
    assert document["result"]["writes_during_restore"]["tables"] == [{"table": "public.accounts", "rows": 1}]
    assert CANARY_PASSWORD not in output
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*), max(id) FROM accounts").fetchone() == (rows_left, 100001)
    assert list(databases(admin_url, target)) == [target]


def test_rows_the_application_writes_during_a_swap_rollback_stop_it_before_the_swap(
    swapped, run_faber, database_url, postgres_admin_url
):
    project_dir, target = swapped
    holder = application_tables(database_url, restoring_name(target))
    backup_id = backup(run_faber, project_dir)
    # Written before the rollback, seen by its check and approved with --discard-app-writes.
    execute(database_url, "DELETE FROM accounts WHERE id > 2990")

    code, document, output = swap_with_application_writing(
        project_dir,
        target,
        holder,
        postgres_admin_url,
        database_url,
        *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
    )

    assert code == 5, output  # as the rollback refused before the restore
    stopped_by_one_row(document, output, database_url, postgres_admin_url, target, rows_left=2991)
    # Run with --discard-app-writes, the refusal does not offer it again: that retry is refused alike.
    suggestions = document["recovery"]["suggestions"]
    assert not any("--discard-app-writes" in s for s in suggestions), suggestions
    assert any(s.startswith("Stop the application's writes, then retry") for s in suggestions), suggestions


def test_rows_the_application_writes_during_an_automatic_swap_rollback_keep_the_deploy(
    project, run_faber, database_url, postgres_admin_url
):
    project_dir = project({"001_orders": "CREATE TABLE orders (id int);", "002_broken": "SELECT 1/0;"}, **SWAP)
    target = name_of(database_url)
    holder = application_tables(database_url, restoring_name(target))
    try:
        code, document, output = swap_with_application_writing(
            project_dir, target, holder, postgres_admin_url, database_url, "migrate", "production", "--yes", "--json"
        )
    finally:
        drop_swap_databases(postgres_admin_url, target)

    assert code == 6, output
    result = document["result"]
    assert result["rollback_status"] == "refused"
    assert "accounts (1 row)" in result["rollback_reason"]
    assert result["writes_since_backup"]["tables"] == [{"table": "public.accounts", "rows": 1}]
    assert CANARY_PASSWORD not in output
    # Not restored: the deploy's first migration and the application's row are both there.
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('orders') IS NOT NULL, max(id) FROM accounts").fetchone() == (
            True,
            100001,
        )
    assert list(databases(postgres_admin_url, target)) == [target]


@pytest.fixture
def hostile_target(postgres_admin_url, monkeypatch):
    """``make(name) -> url``: a database named ``name`` (quotes, ``=``, spaces, multibyte
    characters), the project's URL pointing at it with the canary password; dropped after, with
    whatever a swap of it left."""
    made: list[str] = []

    def make(name: str) -> str:
        admin_execute(postgres_admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        url = database_url_for(postgres_admin_url, quote(name, safe=""), password=CANARY_PASSWORD)
        monkeypatch.setenv("TEST_DATABASE_URL", url)
        return url

    yield make
    for name in made:
        for each in (name, restoring_name(name), previous_name(name)):
            discard_database(postgres_admin_url, each)


# Each run's names differ, so runs sharing the server never meet on one of them.
RUN = uuid.uuid4().hex[:8]


@pytest.mark.parametrize(
    "name",
    [
        f"faber attack 'quoted' \"double\" a=b c {RUN}",
        RUN + "é" * 27,  # 62 bytes: a name of two-byte characters as long as it can be, cut inside them
        f"faber_attack_{RUN}" + "x" * 42,  # 63 bytes
    ],
    ids=["quotes-equals-spaces", "multibyte-62-bytes", "ascii-63-bytes"],
)
def test_a_swap_restore_of_a_database_with_a_hostile_name(
    faber_project, hostile_target, run_faber, postgres_admin_url, name
):
    url = hostile_target(name)
    project_dir = faber_project(
        {
            "database": {
                "migration_tool": sqlfiles.TOOL,
                "environments": {"production": {"database_url_env": "TEST_DATABASE_URL", **SWAP}},
            }
        },
        {},
    )
    rollback_restores_the_backup(run_faber, project_dir, url, postgres_admin_url, name)


def test_the_database_s_owner_with_createdb_restores_by_swap_in_the_default_tablespace(
    project, run_faber, database_url, postgres_admin_url, monkeypatch
):
    """What the swap asks of its user, and no more: CREATEDB and the owner's role. Naming the
    tablespace in CREATE DATABASE needs CREATE on it, which on pg_default only superusers have."""
    with database_owner(postgres_admin_url, database_url, "faber_owner") as url:
        monkeypatch.setenv("TEST_DATABASE_URL", url)
        rollback_restores_the_backup(run_faber, project({}, **SWAP), url, postgres_admin_url, name_of(database_url))


@contextmanager
def database_owner(admin_url: str, database_url: str, prefix: str) -> Iterator[str]:
    """The test database's URL as a new login role with CREATEDB (not a superuser) that owns it."""
    role = f"{prefix}_{uuid.uuid4().hex[:8]}"
    target = name_of(database_url)
    admin_execute(
        admin_url,
        sql.SQL("CREATE ROLE {role} LOGIN NOSUPERUSER CREATEDB; ALTER DATABASE {target} OWNER TO {role}").format(
            role=sql.Identifier(role), target=sql.Identifier(target)
        ),
    )
    try:
        yield database_url.replace("://postgres:", f"://{role}:")
    finally:
        as_admin = database_url_for(admin_url, target)
        admin_execute(as_admin, sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(role)))
        admin_execute(as_admin, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin_execute(admin_url, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def rollback_restores_the_backup(run_faber, project_dir, url: str, admin_url: str, name: str) -> None:
    """A table, a backup of it and a row written since; then `faber rollback --to` that backup
    succeeds, the database is the backup's again and no database of the swap's is left."""
    execute(url, "CREATE TABLE accounts (id int PRIMARY KEY); INSERT INTO accounts VALUES (1)")
    backup_id = backup(run_faber, project_dir)
    at_backup = database_state(url)
    execute(url, "INSERT INTO accounts VALUES (2)")

    done = rollback(run_faber, project_dir, backup_id)

    assert done.returncode == 0, done.stdout + done.stderr
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    assert database_state(url) == at_backup
    assert list(databases(admin_url, name)) == [name]


def test_a_database_named_like_the_restoring_copy_that_is_not_faber_s_is_never_dropped(
    swapped, run_faber, database_url, postgres_admin_url
):
    project_dir, target = swapped
    theirs = restoring_name(target)
    admin_execute(postgres_admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(theirs)))
    execute(
        database_url_for(postgres_admin_url, theirs), "CREATE TABLE invoices (id int); INSERT INTO invoices VALUES (7)"
    )
    execute(database_url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
    backup_id = backup(run_faber, project_dir)
    execute(database_url, "INSERT INTO accounts VALUES (2)")
    before = database_state(database_url)

    done = rollback(run_faber, project_dir, backup_id)

    assert done.returncode == 8, done.stdout
    assert theirs in done.json["error"] and "did not create" in done.json["error"]
    assert database_state(database_url) == before
    with psycopg.connect(database_url_for(postgres_admin_url, theirs)) as conn:
        assert conn.execute("SELECT id FROM invoices").fetchall() == [(7,)]


def test_an_unlabelled_copy_whose_drop_was_interrupted_is_dropped_by_the_next_swap(
    swapped, run_faber, database_url, postgres_admin_url
):
    """A run killed as it created its copy, before the COMMENT that names it faber's, leaves the copy
    empty; a later run stopped while it dropped that copy leaves it invalid: PostgreSQL marks a
    database so (``datconnlimit`` -2) before it removes its files, and no one can connect to it
    since. Marked here as DROP DATABASE marks it (a signal landing inside the drop's checkpoint
    is a race). Found by a kill sweep: every later swap restore refused the name as not faber's."""
    project_dir, target = swapped
    copy = restoring_name(target)
    admin_execute(postgres_admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(copy)))
    admin_execute(postgres_admin_url, "UPDATE pg_catalog.pg_database SET datconnlimit = -2 WHERE datname = %s", [copy])
    rollback_restores_the_backup(run_faber, project_dir, database_url, postgres_admin_url, target)


@pytest.mark.parametrize(
    "signals",
    [[signal.SIGKILL], [signal.SIGTERM], [signal.SIGINT], [signal.SIGTERM, signal.SIGTERM]],
    ids=["SIGKILL", "SIGTERM", "SIGINT", "SIGTERM-twice"],
)
@pytest.mark.parametrize("moment", ["during_pg_restore", "during_the_writes_check_before_the_swap"])
def test_a_kill_before_the_swap_leaves_the_target_as_it_was_and_the_next_rollback_converges(
    swapped, run_faber, database_url, postgres_admin_url, moment, signals
):
    project_dir, target = swapped
    holder = application_tables(database_url, restoring_name(target))
    backup_id = backup(run_faber, project_dir)
    at_backup = database_state(database_url)
    execute(database_url, "DELETE FROM accounts WHERE id > 100")
    execute(database_url, CHANGE_DATABASE_PROPERTIES)
    before = database_state(database_url)

    # The gate's session is on another database: on the target, idle, it would hold the check
    # before the restore back ~10 s for its write counters.
    gate = psycopg.connect(postgres_admin_url, autocommit=True, application_name=holder)
    application = None
    run = FaberProcess.start(
        project_dir,
        *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
        env=SQLFILES,
    )
    try:
        run.wait_until(lambda: sessions_waiting(postgres_admin_url, restoring_name(target), "PgSleep"), what="the gate")
        if moment == "during_the_writes_check_before_the_swap":
            # Connected to the target during pg_restore, as the application would be: the check
            # before the swap then waits for its write counters.
            application = psycopg.connect(database_url, autocommit=True)
            gate.close()
            restored = run.wait_for(
                lambda e: e["kind"] == BACKUP_RESTORE_STEP and e["data"]["step"].startswith("restored ")
            )
            run.wait_for(WRITES_WAITING, after=restored)
        for signum in signals:
            run.kill(signum)
        code = run.wait(timeout=60)
        if moment == "during_pg_restore":
            # pg_restore's workers stop with faber, though the gate still holds the one on the index.
            wait_for(
                lambda: not sessions_waiting(postgres_admin_url, restoring_name(target), "PgSleep"),
                "pg_restore's workers to stop",
                timeout=10,
            )
    finally:
        run.stop_everything()
        gate.close()
        if application is not None:
            application.close()
    left = stopped_before_the_swap(run, code, postgres_admin_url, database_url, before)
    if signals != [signal.SIGKILL]:
        assert left == [], run.stdout()  # faber dropped its copy before it exited
        assert json.loads(run.stdout())["result"]["restore_committed"] is False
    assert left in ([], [restoring_name(target)])

    next_rollback_converges(run_faber, project_dir, backup_id, postgres_admin_url, database_url, at_backup)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_kill_during_the_automatic_swap_rollback_of_a_failed_deploy_leaves_one_side(
    project, run_faber, database_url, postgres_admin_url, signum
):
    project_dir = project(
        {"001_orders": "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1);", "002_broken": "SELECT 1/0;"},
        **SWAP,
    )
    target = name_of(database_url)
    holder = application_tables(database_url, restoring_name(target))
    at_backup = database_state(database_url)
    try:
        with psycopg.connect(postgres_admin_url, autocommit=True, application_name=holder):
            run = FaberProcess.start(project_dir, "migrate", "production", "--yes", "--json", env=SQLFILES)
            try:
                backup_id = run.wait_for("rollback.started")["data"]["backup_id"]
                run.wait_until(
                    lambda: sessions_waiting(postgres_admin_url, restoring_name(target), "PgSleep"), what="the gate"
                )
                deployed_in_part = database_state(database_url)
                run.kill(signum)
                code = run.wait(timeout=60)
            finally:
                run.stop_everything()
        # The rollback had not swapped: the database is as the failed deploy left it, 001 applied.
        assert deployed_in_part != at_backup
        left = stopped_before_the_swap(run, code, postgres_admin_url, database_url, deployed_in_part)
        if signum != signal.SIGKILL:
            result = json.loads(run.stdout())["result"]
            assert (result["rollback_status"], result["restore_committed"], left) == ("failed", False, [])
        assert left in ([], [restoring_name(target)])

        next_rollback_converges(run_faber, project_dir, backup_id, postgres_admin_url, database_url, at_backup)
    finally:
        drop_swap_databases(postgres_admin_url, target)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_a_kill_while_the_previous_database_is_dropped_leaves_the_backup_and_names_the_leftover(
    swapped, run_faber, database_url, postgres_admin_url, signum
):
    project_dir, target = swapped
    holder = application_tables(database_url, target)  # the gate holds the ANALYZE after the swap
    backup_id = backup(run_faber, project_dir)
    at_backup = database_state(database_url)
    execute(database_url, "DELETE FROM accounts WHERE id > 100")

    with psycopg.connect(postgres_admin_url, autocommit=True) as lock:
        with psycopg.connect(postgres_admin_url, autocommit=True, application_name=holder):
            run = FaberProcess.start(
                project_dir,
                *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
                env=SQLFILES,
            )
            try:
                run.wait_until(lambda: sessions_waiting(postgres_admin_url, target, "PgSleep"), what="the gate")
            except BaseException:
                run.stop_everything()
                raise
            # The swap has committed; the drop of the previous database will wait for this lock.
            lock.execute("BEGIN")
            lock.execute(
                sql.SQL("COMMENT ON DATABASE {} IS 'held by the test'").format(sql.Identifier(previous_name(target)))
            )
        try:
            run.wait_until(
                lambda: admin_execute(
                    postgres_admin_url,
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'DROP DATABASE%%' "
                    "AND strpos(query, %s) > 0",
                    [previous_name(target)],
                ),
                what="the drop of the previous database to wait",
            )
            run.kill(signum)
            code = run.wait(timeout=60)
        finally:
            run.stop_everything()
            lock.execute("ROLLBACK")
    assert code is not None
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    assert database_state(database_url) == at_backup
    assert sorted(databases(postgres_admin_url, target)) == sorted([target, previous_name(target)])
    if signum == signal.SIGTERM:
        result = json.loads(run.stdout())["result"]
        assert result["restore_committed"] is True and previous_name(target) in result["details"]

    next_rollback_converges(run_faber, project_dir, backup_id, postgres_admin_url, database_url, at_backup)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_kill_while_faber_copies_its_schema_leaves_the_target_as_it_was(
    project, run_faber, database_url, postgres_admin_url, signum
):
    project_dir = project({"001_orders": "CREATE TABLE orders (id int);"}, **SWAP)
    target = name_of(database_url)
    execute(database_url, "CREATE TABLE accounts (id int); INSERT INTO accounts SELECT generate_series(1, 50)")
    at_backup = database_state(database_url)
    deployed = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=SQLFILES)
    assert deployed.returncode == 0, deployed.stdout
    backup_id = deployed.json["result"]["backup_id"]
    execute(database_url, "DELETE FROM accounts WHERE id > 10")
    before = database_state(database_url)

    try:
        with psycopg.connect(database_url, autocommit=True) as lock:
            # faber's history, which a rollback writes only at its end: the lock holds the copy's pg_dump.
            lock.execute("BEGIN")
            lock.execute("LOCK TABLE faber.faber_deployments IN ACCESS EXCLUSIVE MODE")
            run = FaberProcess.start(
                project_dir,
                *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
                env=SQLFILES,
            )
            try:
                run.wait_until(
                    lambda: admin_execute(
                        postgres_admin_url,
                        "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'faber swap %%'"
                        " AND wait_event_type = 'Lock' AND datname = %s",
                        [target],
                    ),
                    what="faber's schema copy to wait for the test's lock",
                )
                run.kill(signum)
                lock.execute("ROLLBACK")
                code = run.wait(timeout=60)
            finally:
                run.stop_everything()
        left = stopped_before_the_swap(run, code, postgres_admin_url, database_url, before)
        if signum != signal.SIGKILL:
            assert left == [] and json.loads(run.stdout())["result"]["restore_committed"] is False
        assert left in ([], [restoring_name(target)])

        next_rollback_converges(run_faber, project_dir, backup_id, postgres_admin_url, database_url, at_backup)
    finally:
        drop_swap_databases(postgres_admin_url, target)


@pytest.mark.parametrize("left_open", [False, True], ids=["session-ended", "session-left-in-a-transaction"])
def test_under_warn_a_swap_rollback_reports_the_rows_written_during_it_as_discarded(
    project, run_faber, database_url, postgres_admin_url, left_open
):
    project_dir = project({}, **SWAP, restore_with_app_writes="warn")
    target = name_of(database_url)
    holder = application_tables(database_url, restoring_name(target))
    backup_id = backup(run_faber, project_dir)
    at_backup = database_state(database_url)
    try:
        rollback_args = ("rollback", "production", "--to", backup_id, "--yes", "--json")
        if left_open:  # seen only by the check inside the swap
            code, document, output = swap_with_a_session_left_open(
                project_dir,
                target,
                holder,
                postgres_admin_url,
                database_url,
                backup_id,
                COMMITTED_THEN_IN_A_TRANSACTION,
            )
        else:
            code, document, output = swap_with_application_writing(
                project_dir, target, holder, postgres_admin_url, database_url, *rollback_args
            )
    finally:
        drop_swap_databases(postgres_admin_url, target)

    assert code == 0, output
    # The check before the restore saw nothing; the one before the swap saw the row, and says so.
    assert document["result"]["writes_since_backup"]["tables"] == [{"table": "public.accounts", "rows": 1}]
    assert database_state(database_url) == at_backup
    assert CANARY_PASSWORD not in output


def test_status_reports_the_leftovers_faber_marked_and_drops_nothing(
    swapped, run_faber, postgres_admin_url, database_url
):
    """A killed swap's marked ``<db>_faber_previous`` and a stale rehearsal of this database are
    listed with the statement that drops them; an unmarked ``<db>_faber_restoring``, a fresh
    rehearsal and another database's rehearsal are not; nothing is dropped, the exit code is status's."""
    project_dir, target = swapped
    marked, look_alike = previous_name(target), restoring_name(target)
    suffix = uuid.uuid4().hex[:8]
    stale = f"faber_rehearsal_20200101000000_{suffix}"
    fresh = f"faber_rehearsal_{datetime.now(timezone.utc):%Y%m%d%H%M%S}_{suffix}"
    elsewhere = f"faber_rehearsal_20200101000001_{suffix}"
    comments = {
        marked: f"faber: {target} before restoring backup-1",
        look_alike: None,
        stale: f"faber rehearsal of {target}: a throwaway copy, safe to drop",
        fresh: f"faber rehearsal of {target}: a throwaway copy, safe to drop",
        elsewhere: "faber rehearsal of another_database: a throwaway copy, safe to drop",
    }
    try:
        for name, comment in comments.items():
            admin_execute(postgres_admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            if comment:
                admin_execute(
                    postgres_admin_url,
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment)),
                )

        document = run_faber("status", "production", "--json", cwd=project_dir, env=SQLFILES)
        human = run_faber("status", "production", cwd=project_dir, env=SQLFILES)

        assert document.returncode == 0, document.output
        assert document.json["result"]["leftover_databases"] == [
            {
                "name": stale,
                "left_by": "rehearsal",
                "details": comments[stale],
                "drop": f'DROP DATABASE "{stale}"',
            },
            {
                "name": marked,
                "left_by": "swap_restore",
                "details": comments[marked],
                "drop": f'DROP DATABASE "{marked}"',
            },
        ]
        assert human.returncode == 0, human.output
        assert f'DROP DATABASE "{marked}"' in human.stdout and f'DROP DATABASE "{stale}"' in human.stdout
        assert look_alike not in human.stdout and fresh not in human.stdout and elsewhere not in human.stdout
        assert CANARY_PASSWORD not in document.output + human.output
        left = admin_execute(
            postgres_admin_url, "SELECT datname FROM pg_database WHERE datname = ANY(%s)", [list(comments)]
        )
        assert sorted(name for (name,) in left) == sorted(comments)
    finally:
        for name in (stale, fresh, elsewhere):
            admin_execute(postgres_admin_url, sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def swap_with_a_session_left_open(
    project_dir, target: str, holder: str, admin_url: str, database_url: str, backup_id: str, script: str
):
    """``faber rollback --to backup_id`` (swap) while the application's session runs ``script``
    (during pg_restore, held at the gate of :func:`application_tables` by ``holder``) and stays
    connected until the swap ends it; the exit code, the JSON document and all output."""
    with psycopg.connect(admin_url, autocommit=True, application_name=holder):
        run = FaberProcess.start(
            project_dir, *("rollback", "production", "--to", backup_id, "--yes", "--json"), env=SQLFILES
        )
        shop = None
        try:
            run.wait_until(
                lambda: sessions_waiting(admin_url, restoring_name(target), "PgSleep"), what="pg_restore at the gate"
            )
            # Connected once the check before the restore has passed: idle then, the session
            # would hold that check back ~10 s for its counters, which say nothing yet.
            shop = psycopg.connect(database_url, autocommit=True, application_name="shop")
            shop.execute(script)
        except BaseException:
            if shop is not None:
                shop.close()
            run.stop_everything()
            raise
    try:
        code = run.finish()
        with pytest.raises(psycopg.OperationalError):
            shop.execute("SELECT 1")  # the swap ended the session
    finally:
        shop.close()
        run.stop_everything()
    return code, json.loads(run.stdout()), run.stdout() + run.stderr()


# One message: between its COMMIT and the next BEGIN the session is never idle, so it reports the
# row's count only as it ends: the check before the swap cannot see it.
COMMITTED_THEN_IN_A_TRANSACTION = (
    "BEGIN; INSERT INTO accounts VALUES (100001, 'committed'); COMMIT; BEGIN; SELECT count(*) FROM accounts"
)


def test_a_row_committed_by_a_session_the_swap_ends_stops_it_under_refuse(
    project, database_url, postgres_admin_url, run_faber
):
    project_dir = project({}, **SWAP, restore_with_app_writes="refuse")
    target = name_of(database_url)
    holder = application_tables(database_url, restoring_name(target))
    backup_id = backup(run_faber, project_dir)
    try:
        code, document, output = swap_with_a_session_left_open(
            project_dir, target, holder, postgres_admin_url, database_url, backup_id, COMMITTED_THEN_IN_A_TRANSACTION
        )
    finally:
        drop_swap_databases(postgres_admin_url, target)

    assert code == 5, output
    stopped_by_one_row(document, output, database_url, postgres_admin_url, target, rows_left=3001)


def test_an_uncommitted_write_the_swap_ends_does_not_stop_it(project, database_url, postgres_admin_url, run_faber):
    """The swap ends the transaction, which rolls back: it discards nothing, and the swap goes on."""
    project_dir = project({}, **SWAP, restore_with_app_writes="refuse")
    target = name_of(database_url)
    holder = application_tables(database_url, restoring_name(target))
    backup_id = backup(run_faber, project_dir)
    at_backup = database_state(database_url)
    try:
        code, document, output = swap_with_a_session_left_open(
            project_dir,
            target,
            holder,
            postgres_admin_url,
            database_url,
            backup_id,
            "BEGIN; INSERT INTO accounts VALUES (100001, 'never committed'); DELETE FROM accounts WHERE id <= 10",
        )
    finally:
        drop_swap_databases(postgres_admin_url, target)

    assert code == 0, output
    assert document["result"]["writes_since_backup"]["status"] == "none"
    assert database_state(database_url) == at_backup


def test_the_rows_of_a_failed_deploy_s_own_migrations_do_not_stop_its_swap_rollback(
    project, run_faber, database_url, postgres_admin_url
):
    """faber's rows are not the application's: the swap ends the deploy's sessions too, and the
    counts they report as they end must not stop the rollback."""
    migrations = {
        "001_orders": "CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 50);",
        "002_broken": "SELECT 1/0;",
    }
    project_dir = project(migrations, **SWAP, restore_with_app_writes="refuse")
    target = name_of(database_url)
    try:
        done = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=SQLFILES)
    finally:
        drop_swap_databases(postgres_admin_url, target)

    assert done.returncode == 6, done.stdout
    assert done.json["result"]["rollback_status"] == "success", done.stdout


def faber_lock_holders(admin_url: str, target: str) -> list:
    """The sessions holding faber's lock of ``target``, on ``target``."""
    key = faber_lock_key(target)
    return admin_execute(
        admin_url,
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory'"
        " AND l.granted AND d.datname = %s AND l.classid = ((%s::bigint >> 32) & 4294967295)::oid"
        " AND l.objid = (%s::bigint & 4294967295)::oid AND l.objsubid = 1",
        [target, key, key],
    )


@dataclass
class StoppedAtTheRename:
    """How a swap rollback ended that the test stopped while its rename waited."""

    returncode: int
    out: bytes
    err: bytes
    before: dict
    """The database as it was before the rollback."""
    oid_before: int
    lock_holders: list
    """Who held faber's lock while the run wrote its history row, after the swap."""


def rollback_stopped_at_the_rename(
    swapped,
    run_faber,
    database_url: str,
    admin_url: str,
    stop: Callable[[subprocess.Popen, psycopg.Connection], None],
) -> StoppedAtTheRename:
    """Start a swap rollback whose rename waits for a lock the test holds on the database (the swap
    has ended the target's sessions then, faber's lock session among them) and call ``stop(faber,
    gate)`` there, which must let go of the lock (``gate.execute("ROLLBACK")``). Then read who
    holds faber's lock while the run writes its history row as it finishes, the last thing it
    writes: a trigger holds that row until the test cancels it (its function named as faber's own:
    faber's schema holds nothing else of others; the swap copies both with the schema)."""
    project_dir, target = swapped
    execute(database_url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
    backup_id = backup(run_faber, project_dir)
    done = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=SQLFILES)
    assert done.returncode == 0, done.stdout  # faber's history table exists
    execute(
        database_url,
        """
        CREATE FUNCTION faber.faber_test_gate() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN PERFORM pg_sleep(600); RETURN NEW; END $$;
        CREATE TRIGGER faber_test_gate BEFORE INSERT OR UPDATE ON faber.faber_deployments
            FOR EACH ROW WHEN (NEW.status <> 'running') EXECUTE FUNCTION faber.faber_test_gate();
        """,
    )
    execute(database_url, "INSERT INTO accounts VALUES (2)")
    before = database_state(database_url)
    oid_before = databases(admin_url, target)[target]

    with psycopg.connect(admin_url, autocommit=True) as gate:
        # The rename waits for this lock on the database, after the swap ended the sessions.
        gate.execute("BEGIN")
        gate.execute(sql.SQL("COMMENT ON DATABASE {} IS 'held by the test'").format(sql.Identifier(target)))
        faber = start_faber(
            *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
            cwd=project_dir,
            env=SQLFILES,
        )
        try:
            wait_for(lambda: swap_waiting_for_lock(admin_url, target), "the swap to wait for the test's lock")
            stop(faber, gate)
            wait_for(lambda: sessions_waiting(admin_url, target, "PgSleep"), "the history row to wait")
            lock_holders = faber_lock_holders(admin_url, target)
            admin_execute(
                admin_url,
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = %s AND wait_event = 'PgSleep'",
                [target],
            )
        finally:
            gate.close()
            try:
                out, err = faber.communicate(timeout=120)
            finally:
                if faber.poll() is None:
                    faber.kill()
                    faber.communicate()
        execute(database_url, "DROP FUNCTION faber.faber_test_gate() CASCADE")
    return StoppedAtTheRename(faber.returncode, out, err, before, oid_before, lock_holders)


def test_a_deploy_waiting_for_faber_s_lock_when_the_swap_ends_its_session_says_so_and_changes_nothing(
    project, run_faber, database_url, postgres_admin_url, tmp_path
):
    """A CI job's deploy queued behind a rollback: the swap ends every session of the database, the
    deploy's waiting one among them. It stops, having changed nothing, with LOCKED (exit 7) and
    what ended its wait, not as an unexpected error."""
    project_dir = project({}, lock_wait_seconds=120, **SWAP)
    target = name_of(database_url)
    holder = application_tables(database_url, restoring_name(target))  # holds pg_restore -j
    backup_id = backup(run_faber, project_dir)
    at_backup = database_state(database_url)
    execute(database_url, "DELETE FROM accounts WHERE id > 100")
    queued_dir = shutil.copytree(project_dir, tmp_path / "queued", ignore=shutil.ignore_patterns(".faber"))
    (queued_dir / "migrations").mkdir()
    (queued_dir / "migrations" / "001_orders.sql").write_text("CREATE TABLE orders (id int PRIMARY KEY);")

    runs: list[FaberProcess] = []
    try:
        with psycopg.connect(postgres_admin_url, autocommit=True, application_name=holder):
            restoring = FaberProcess.start(
                project_dir,
                *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
                env=SQLFILES,
            )
            runs.append(restoring)
            restoring.wait_until(
                lambda: sessions_waiting(postgres_admin_url, restoring_name(target), "PgSleep"), what="the gate"
            )
            queued = FaberProcess.start(queued_dir, "migrate", "production", "--yes", "--json", env=SQLFILES)
            runs.append(queued)
            queued.wait_until(lambda: waiting_for_the_lock(postgres_admin_url, target), what="the lock wait")
        assert restoring.finish() == 0, restoring.stdout()
        code = queued.finish()
    finally:
        for run in runs:
            run.stop_everything()
        drop_swap_databases(postgres_admin_url, target)

    document = json.loads(queued.stdout())
    assert code == 7, queued.stdout()
    assert document["code"] == "LOCKED"
    assert "was ended while it waited for the lock" in document["error"]
    assert "nothing was changed" in document["error"]
    assert "lock.acquired" not in queued.kinds()
    assert CANARY_PASSWORD not in queued.stdout() + queued.stderr()
    assert database_state(database_url) == at_backup


def waiting_for_the_lock(admin_url: str, target: str) -> bool:
    """Whether a deploy's session on ``target`` polls for faber's lock."""
    return bool(
        admin_execute(
            admin_url,
            "SELECT 1 FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = 'faber deploy-migrations production' AND query LIKE '%%pg_try_advisory_lock%%'",
            [target],
        )
    )


def test_after_a_failed_swap_faber_holds_its_lock_again_for_the_rest_of_the_run(
    swapped, run_faber, database_url, postgres_admin_url
):
    """The swap ends every session of the target, faber's lock session among them; when its rename
    then fails, the target is unchanged and faber's lock is held again until the run has ended (its
    history row is the last thing it writes)."""
    target = swapped[1]

    def cancel_the_rename(faber: subprocess.Popen, gate: psycopg.Connection) -> None:
        renames = admin_execute(
            postgres_admin_url,
            "SELECT pid, pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'faber swap %%'"
            " AND query LIKE 'ALTER DATABASE%%RENAME%%' AND query LIKE %s",
            [f"%{target}%"],
        )
        # The cancel is a signal the rename acts on when it wakes: let go of the lock only once it
        # has, or the rename may be granted the lock first and commit.
        wait_for(
            lambda: (
                not admin_execute(
                    postgres_admin_url,
                    "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s) AND wait_event_type = 'Lock'",
                    [[pid for pid, _ in renames]],
                )
            ),
            "the rename to be cancelled",
        )
        gate.execute("ROLLBACK")

    ended = rollback_stopped_at_the_rename(swapped, run_faber, database_url, postgres_admin_url, cancel_the_rename)

    document = faber_json(ended.out)
    assert ended.returncode != 0, ended.out
    assert "the swap failed and was rolled back" in document["error"], ended.out
    assert f"{target} is unchanged" in document["error"]
    assert CANARY_PASSWORD not in (ended.out + ended.err).decode()
    assert database_state(database_url) == ended.before
    assert databases(postgres_admin_url, target) == {target: ended.oid_before}
    assert len(ended.lock_holders) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_once_the_swap_ended_the_sessions_leaves_faber_s_lock_held_for_the_rest_of_the_run(
    swapped, run_faber, database_url, postgres_admin_url, signum
):
    """The swap ended every session of the target, faber's lock session among them, and waits to
    rename: a signal then stops it before it commits, and faber takes its lock again for the rest
    of the run, as after a failed swap (its history row is the last thing it writes)."""

    def signal_faber(faber: subprocess.Popen, gate: psycopg.Connection) -> None:
        faber.send_signal(signum)
        gate.execute("ROLLBACK")

    ended = rollback_stopped_at_the_rename(swapped, run_faber, database_url, postgres_admin_url, signal_faber)

    document = faber_json(ended.out)
    assert (ended.returncode, document["code"]) == (130, "INTERRUPTED"), ended.out
    assert document["result"]["restore_committed"] is False, ended.out
    assert CANARY_PASSWORD not in (ended.out + ended.err).decode()
    assert database_state(database_url) == ended.before
    assert len(ended.lock_holders) == 1, ended.err.decode()[-3000:]


def rollback_in_process(project_dir, backup_id: str, monkeypatch):
    """``faber rollback --to backup_id --yes --discard-app-writes`` in this process, so a test can
    replace a step of it."""
    for name, value in SQLFILES.items():
        monkeypatch.setenv(name, value)
    return api.rollback("production", to=backup_id, yes=True, discard_app_writes=True, working_directory=project_dir)


def test_a_session_that_connects_before_the_rename_makes_the_swap_try_again_and_succeed(
    swapped, run_faber, database_url, postgres_admin_url, monkeypatch
):
    """An application's pool reconnects as soon as the swap ends its sessions: a session that
    connects between the end of the others and the rename makes the rename fail ("being accessed
    by other users"), and the swap is tried again, which ends it too, and restores the backup."""
    project_dir, target = swapped
    execute(database_url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
    at_backup = database_state(database_url)
    backup_id = backup(run_faber, project_dir)
    execute(database_url, "INSERT INTO accounts VALUES (2)")
    reconnected: list[psycopg.Connection] = []
    real_wait_until_ended = swap_module.writes.wait_until_ended

    def pool_reconnecting_once_the_sessions_ended(admin, pids):
        real_wait_until_ended(admin, pids)
        if not reconnected:
            reconnected.append(psycopg.connect(database_url, autocommit=True))

    monkeypatch.setattr(swap_module.writes, "wait_until_ended", pool_reconnecting_once_the_sessions_ended)
    document = rollback_in_process(project_dir, backup_id, monkeypatch)

    assert document.status == "success", document
    assert document.result.rollback_status == "success"
    with pytest.raises(psycopg.OperationalError), reconnected[0]:  # the second attempt ended it too
        reconnected[0].execute("SELECT 1")
    assert database_state(database_url) == at_backup
    assert list(databases(postgres_admin_url, target)) == [target]


def swap_with_a_bug(swap, committed):
    raise AttributeError("'bool' object has no attribute 'get'")  # a bug faber once had here


def test_a_restore_stopped_by_a_bug_is_a_failed_restore_that_says_faber_cannot_tell_whether_it_committed(
    swapped, run_faber, database_url, monkeypatch
):
    project_dir, target = swapped
    execute(database_url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
    backup_id = backup(run_faber, project_dir)

    monkeypatch.setattr(swap_module, "_swap_names", swap_with_a_bug)
    document = rollback_in_process(project_dir, backup_id, monkeypatch)

    assert (document.code, document.exit_code) == ("RESTORE_FAILED", 8), document
    assert f"Restore of {backup_id} stopped by an unexpected error (AttributeError: " in document.error
    assert "faber cannot tell whether any of it committed" in document.error
    assert "See what the database holds: faber status production" in document.recovery.suggestions


def test_a_failed_deploy_whose_automatic_restore_hits_a_bug_still_reports_what_committed(
    project, database_url, monkeypatch
):
    """The deploy's document is what tells which migrations committed and which backup undoes
    them: a bug in the restore makes the rollback step fail, it does not replace the document."""
    project_dir = project(
        {"001_orders": "CREATE TABLE orders (id int PRIMARY KEY);", "002_broken": "SELECT 1/0;"}, **SWAP
    )
    execute(database_url, "CREATE TABLE accounts (id int)")
    monkeypatch.setattr(swap_module, "_swap_names", swap_with_a_bug)
    for name, value in SQLFILES.items():
        monkeypatch.setenv(name, value)

    document = api.deploy("production", yes=True, working_directory=project_dir)

    assert (document.code, document.exit_code) == ("RESTORE_FAILED", 8), document
    result = document.result
    assert result["applied_migrations"] == ["001_orders"] and result["failed_migration"] == "002_broken"
    assert result["backup_id"] and result["rollback_status"] == "failed"
    assert "stopped by an unexpected error (AttributeError: " in result["rollback_error"]
    assert f"faber rollback production --to {result['backup_id']}" in " ".join(document.recovery.suggestions)


def test_when_faber_cannot_take_its_lock_again_after_a_failed_swap_the_error_says_so(
    swapped, run_faber, database_url, monkeypatch
):
    """A swap that failed after ending the sessions, while another session holds faber's lock
    (here the run's own first one: this stand-in for the swap ends no session): the error says
    the target is unchanged and that faber's lock is not held."""
    project_dir, target = swapped
    execute(database_url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
    backup_id = backup(run_faber, project_dir)

    def swap_failing_after_ending_the_sessions(swap, committed):
        swap.sessions_ended = True
        raise RestoreFailed(f"the swap failed and was rolled back: a stand-in; {swap.target} is unchanged")

    monkeypatch.setattr(swap_module, "_swap_names", swap_failing_after_ending_the_sessions)
    document = rollback_in_process(project_dir, backup_id, monkeypatch)

    assert document.code == "RESTORE_FAILED", document
    assert f"{target} is unchanged; faber's lock could not be taken again after the failed swap" in document.error


def test_a_signal_while_the_swap_checks_the_archive_says_nothing_was_restored(
    swapped, run_faber, database_url, postgres_admin_url, monkeypatch
):
    """SIGTERM while the swap restore checks the archive's digest (long for a large archive), before
    any copy exists: the document says the restore was stopped before it began, the database as
    it was. Before, the check ran outside the restore's own handling of a signal, and the run said
    the provider "did not say whether it committed"."""
    project_dir, target = swapped
    execute(database_url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
    backup_id = backup(run_faber, project_dir)
    execute(database_url, "INSERT INTO accounts VALUES (2)")
    before = database_state(database_url)

    def signal_while_checking(*args):
        raise Terminated()

    monkeypatch.setattr(swap_module.store, "verify_archive", signal_while_checking)
    document = rollback_in_process(project_dir, backup_id, monkeypatch)

    assert document.code == "INTERRUPTED", document
    assert document.result["restore_committed"] is False, document
    assert "stopped before it began" in document.result["details"], document
    assert database_state(database_url) == before
    assert set(databases(postgres_admin_url, target)) == {target}


def test_a_signal_as_the_rollback_releases_faber_s_lock_says_the_restore_committed(
    swapped, run_faber, database_url, monkeypatch
):
    """SIGTERM after the restore was verified, while faber releases its lock: the document says the
    restore committed (it did), not a bare "Interrupted" that reads as if nothing had changed."""
    project_dir, _ = swapped
    execute(database_url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
    backup_id = backup(run_faber, project_dir)
    execute(database_url, "INSERT INTO accounts VALUES (2)")
    locked = workflow.deploy_lock

    @contextlib.contextmanager
    def lock_released_as_a_signal_lands(context):
        with locked(context) as lock:
            yield lock
        raise Terminated()

    monkeypatch.setattr(workflow, "deploy_lock", lock_released_as_a_signal_lands)
    document = rollback_in_process(project_dir, backup_id, monkeypatch)

    assert document.code == "INTERRUPTED", document
    assert document.result["restore_committed"] is True, document
    assert document.error.startswith("Interrupted by SIGTERM; the restore had committed"), document.error
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT id FROM accounts").fetchall() == [(1,)]


def test_a_swap_rollback_whose_lock_is_lost_during_pg_restore_stops_before_the_swap(
    swapped, run_faber, database_url, postgres_admin_url
):
    """faber's lock session ended while pg_restore -j fills the copy (an operator, a proxy
    timeout): another run may hold the lock by the time the copy is ready, so the swap must not
    happen. The rollback stops with LOCKED (exit 7), restore_committed false, the target exactly
    as it was and the copy dropped."""
    project_dir, target = swapped
    holder = application_tables(database_url, restoring_name(target))  # holds pg_restore -j in the copy
    backup_id = backup(run_faber, project_dir)
    execute(database_url, "DELETE FROM accounts WHERE id > 100")
    before = database_state(database_url)
    oid_before = databases(postgres_admin_url, target)[target]

    with psycopg.connect(postgres_admin_url, autocommit=True, application_name=holder) as gate:
        run = FaberProcess.start(
            project_dir,
            *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
            env=SQLFILES,
        )
        try:
            run.wait_until(
                lambda: sessions_waiting(postgres_admin_url, restoring_name(target), "PgSleep"), what="the gate"
            )
            with psycopg.connect(database_url, autocommit=True) as operator:
                end_faber_lock_session(operator)
            gate.close()
            code = run.finish(120)
        finally:
            run.stop_everything()

    document = json.loads(run.stdout())
    assert (code, document["code"]) == (7, "LOCKED"), document
    assert "the restore stopped before it committed" in document["error"], document
    result = document["result"]
    assert (result["rollback_status"], result["restore_committed"]) == ("failed", False), result
    assert "provider_data" not in result, "nothing is left behind to name"
    assert databases(postgres_admin_url, target) == {target: oid_before}, "the copy is dropped, nothing renamed"
    assert database_state(database_url) == before
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    assert "Traceback" not in run.stderr()


def test_a_failed_deploy_whose_lock_is_lost_during_its_swap_rollback_keeps_the_deploy_and_says_so(
    project, database_url, postgres_admin_url
):
    project_dir = project(
        {
            "001_orders": "CREATE TABLE orders (id int PRIMARY KEY);",
            "002_broken": "INSERT INTO orders VALUES (1); SELECT 1/0;",
        },
        **SWAP,
    )
    target = name_of(database_url)
    holder = application_tables(database_url, restoring_name(target))  # holds pg_restore -j in the copy
    oid_before = databases(postgres_admin_url, target)[target]

    try:
        with psycopg.connect(postgres_admin_url, autocommit=True, application_name=holder) as gate:
            run = FaberProcess.start(project_dir, "migrate", "production", "--yes", "--json", env=SQLFILES)
            try:
                run.wait_until(
                    lambda: sessions_waiting(postgres_admin_url, restoring_name(target), "PgSleep"), what="the gate"
                )
                as_the_deploy_left_it = database_state(database_url)
                with psycopg.connect(database_url, autocommit=True) as operator:
                    end_faber_lock_session(operator)
                gate.close()
                code = run.finish(120)
            finally:
                run.stop_everything()
        left = databases(postgres_admin_url, target)
    finally:
        drop_swap_databases(postgres_admin_url, target)

    document = json.loads(run.stdout())
    assert (code, document["code"]) == (7, "LOCKED"), document
    result = document["result"]
    assert (result["applied_migrations"], result["failed_migration"]) == (["001_orders"], "002_broken"), result
    assert (result["rollback_initiated"], result["rollback_status"], result["restore_committed"]) == (
        True,
        "lock_lost",
        False,
    ), result
    assert left == {target: oid_before}, "the copy is dropped, nothing renamed"
    assert database_state(database_url) == as_the_deploy_left_it
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


@dataclass
class DeployedMeanwhile:
    """A run whose swap restore's copy waited while faber's lock was lost and another deploy ran."""

    code: int | None
    document: dict
    output: str
    other: FaberRun
    left: dict[str, int]


def another_deploy_while_the_copy_waits(
    project_dir: Path, other_dir: Path, args: tuple[str, ...], admin_url: str, database_url: str, holder: str
) -> DeployedMeanwhile:
    """Run faber with ``args`` in ``project_dir`` until its swap restore's pg_restore -j waits at the
    gate in the copy (``holder``, see :func:`application_tables`), end faber's lock session as an
    operator would, deploy ``other_dir`` to the same database meanwhile (it takes the lock and
    commits, its history row among its writes), then let the restore go on."""
    target = name_of(database_url)
    try:
        with psycopg.connect(admin_url, autocommit=True, application_name=holder) as gate:
            run = FaberProcess.start(project_dir, *args, env=SQLFILES)
            try:
                run.wait_until(lambda: sessions_waiting(admin_url, restoring_name(target), "PgSleep"), what="the gate")
                with psycopg.connect(database_url, autocommit=True) as operator:
                    end_faber_lock_session(operator)
                other = faber_command("migrate", "production", "--yes", "--json", cwd=other_dir, env=SQLFILES)
                gate.close()
                code = run.finish(120)
            finally:
                run.stop_everything()
        left = databases(admin_url, target)
    finally:
        drop_swap_databases(admin_url, target)
    return DeployedMeanwhile(code, json.loads(run.stdout()), run.stdout() + run.stderr(), other, left)


def test_a_failed_deploy_whose_swap_rollback_fails_once_another_deploy_took_the_lost_lock_says_the_lock_was_lost(
    project, database_url, postgres_admin_url, tmp_path
):
    """The other deploy's rows in faber's tables (its backup's baseline) make the copy differ from
    the target's, or the check before the swap finds the lock lost: either way the restore stops
    before its swap, the lost lock's doing, reported as LOCKED with rollback_status lock_lost, not
    as a failed restore advising to retry the rollback, which would undo the other deploy."""
    project_dir = project(
        {
            "001_orders": "CREATE TABLE orders (id int PRIMARY KEY);",
            "002_broken": "INSERT INTO orders VALUES (1); SELECT 1/0;",
        },
        **SWAP,
    )
    other_dir = shutil.copytree(project_dir, tmp_path / "fixed", ignore=shutil.ignore_patterns(".faber"))
    (other_dir / "migrations" / "002_broken.sql").write_text("INSERT INTO orders VALUES (2);")
    target = name_of(database_url)
    holder = application_tables(database_url, restoring_name(target))  # holds pg_restore -j in the copy
    oid_before = databases(postgres_admin_url, target)[target]

    run = another_deploy_while_the_copy_waits(
        project_dir,
        other_dir,
        ("migrate", "production", "--yes", "--json"),
        postgres_admin_url,
        database_url,
        holder,
    )

    assert run.other.returncode == 0, run.other.output
    assert (run.code, run.document["code"]) == (7, "LOCKED"), run.document
    assert "002_broken" in run.document["error"].split(";")[0], "the deploy's failure comes first"
    assert "did not commit: faber's lock on the database was lost" in run.document["error"], run.document
    result = run.document["result"]
    assert (result["rollback_initiated"], result["rollback_status"], result["restore_committed"]) == (
        True,
        "lock_lost",
        False,
    ), result
    suggestions = run.document["recovery"]["suggestions"]
    assert any("Find out who ended faber's session" in s for s in suggestions), suggestions
    assert any("see what it did: faber history production" in s for s in suggestions), suggestions
    assert not any(s.startswith("Retry the rollback") for s in suggestions), suggestions
    assert run.left == {target: oid_before}, "the copy is dropped, nothing renamed"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT id FROM orders").fetchall() == [(2,)], "the other deploy's work is kept"
    assert CANARY_PASSWORD not in run.output


def test_a_swap_rollback_that_fails_once_another_deploy_took_the_lost_lock_says_the_lock_was_lost(
    swapped, run_faber, database_url, postgres_admin_url, tmp_path
):
    """The same for ``faber rollback``: LOCKED, nothing committed, and no advice to run the rollback
    again before seeing what the other run did."""
    project_dir, target = swapped
    holder = application_tables(database_url, restoring_name(target))  # holds pg_restore -j in the copy
    backup_id = backup(run_faber, project_dir)
    other_dir = shutil.copytree(project_dir, tmp_path / "other", ignore=shutil.ignore_patterns(".faber"))
    (other_dir / "migrations").mkdir()
    (other_dir / "migrations" / "001_orders.sql").write_text(
        "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1);"
    )
    oid_before = databases(postgres_admin_url, target)[target]

    run = another_deploy_while_the_copy_waits(
        project_dir,
        other_dir,
        ("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
        postgres_admin_url,
        database_url,
        holder,
    )

    assert run.other.returncode == 0, run.other.output
    assert (run.code, run.document["code"]) == (7, "LOCKED"), run.document
    assert "the restore stopped before it committed" in run.document["error"], run.document
    result = run.document["result"]
    assert (result["rollback_status"], result["restore_committed"]) == ("failed", False), result
    suggestions = run.document["recovery"]["suggestions"]
    assert suggestions[0].startswith("Find out who ended faber's session"), suggestions
    assert run.left == {target: oid_before}, "the copy is dropped, nothing renamed"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT id FROM orders").fetchall() == [(1,)], "the other deploy's work is kept"
    assert CANARY_PASSWORD not in run.output


def test_a_lost_lock_whose_copy_cannot_be_dropped_names_the_copy_and_how_to_drop_it(
    project, run_faber, database_url, postgres_admin_url, plugin_manager, monkeypatch
):
    """faber's lock is lost right before the swap, and the copy is no longer faber's user's to drop
    (given to another owner meanwhile): the target is unchanged, and the error names the copy left
    behind with the DROP DATABASE that removes it."""
    target = name_of(database_url)
    copy = restoring_name(target)
    with database_owner(postgres_admin_url, database_url, "faber_swap_owner") as url:
        try:
            monkeypatch.setenv("TEST_DATABASE_URL", url)
            project_dir = project({}, **SWAP)
            execute(url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
            backup_id = backup(run_faber, project_dir)
            execute(url, "INSERT INTO accounts VALUES (2)")
            plugin_manager.register(sqlfiles, name="sqlfiles")
            plugins = Plugins(plugin_manager)
            context = open_context(project_dir, "production", "rollback")
            record = next(b for b in plugins.backup_list(context) if b.id == backup_id)

            def copy_taken_away_and_lock_lost() -> None:
                admin_execute(
                    postgres_admin_url, sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(sql.Identifier(copy))
                )
                raise workflow.lock_lost_before_restore_committed(context, record)

            context.before_restore_commit.append(copy_taken_away_and_lock_lost)
            with pytest.raises(LockLost) as lost:
                plugins.backup_restore(context, record)

            drop = f'DROP DATABASE "{copy}"'
            assert f"{copy} is a restored copy the swap did not take in" in lost.value.message, lost.value.message
            assert drop in lost.value.message, lost.value.message
            assert lost.value.result["provider_data"] == {"restore_mode": "swap", "leftover_database": copy}
            assert lost.value.result["restore_committed"] is False
            assert set(databases(postgres_admin_url, target)) == {target, copy}
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT id FROM accounts ORDER BY 1").fetchall() == [(1,), (2,)]
            assert CANARY_PASSWORD not in lost.value.message
        finally:
            drop_swap_databases(postgres_admin_url, target)


def test_a_preview_that_records_itself_during_a_swap_rollback_neither_fails_it_nor_is_lost(
    swapped, run_faber, database_url, postgres_admin_url
):
    """A ``faber migrate --dry-run`` takes no lock and records itself in faber's history. Run while
    the swap restored into its copy, it made the copy of faber's schema differ from the target's:
    the rollback failed (exit 8), and a failed deploy's automatic rollback left it half applied.
    Its row is copied with the history again before the swap, and kept."""
    project_dir, target = swapped
    holder = application_tables(database_url, restoring_name(target))
    backup_id = backup(run_faber, project_dir)
    execute(database_url, "DELETE FROM accounts WHERE id > 2990")

    with psycopg.connect(postgres_admin_url, autocommit=True, application_name=holder):
        run = FaberProcess.start(
            project_dir,
            "rollback",
            "production",
            "--to",
            backup_id,
            "--yes",
            "--discard-app-writes",
            "--json",
            env=SQLFILES,
        )
        try:
            run.wait_until(
                lambda: sessions_waiting(postgres_admin_url, restoring_name(target), "PgSleep"),
                what="pg_restore at the gate",
            )
            preview = run_faber("migrate", "production", "--dry-run", "--json", cwd=project_dir, env=SQLFILES)
            assert preview.returncode == 0, preview.output
        except BaseException:
            run.stop_everything()
            raise
    try:
        code = run.finish()
    finally:
        run.stop_everything()

    assert code == 0, run.stdout() + run.stderr()[-3000:]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (3000,)
        operations = [row[0] for row in conn.execute("SELECT operation FROM faber.faber_deployments")]
    assert "preview-migrations" in operations, operations
