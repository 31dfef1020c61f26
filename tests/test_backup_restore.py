"""The pg_dump restore on a real PostgreSQL: every object kind, statistics, and atomicity under kills.

A kill test stops the restore at a known point inside its data load: the archive holds a table
whose CHECK constraint waits for an advisory lock the test holds, so the restore's COPY of that
table blocks after the tables before it were recreated and filled. faber is killed there, and the
database must equal its state before the restore.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from faber_core.backup import pg_dump
from faber_core.backup.swap import previous_name, restoring_name
from faber_core.errors import RestoreFailed
from faber_core.models import MigrationState
from faber_core.testing.faults import FaberProcess, descendants
from faber_core.testing.fixtures import (
    CANARY_PASSWORD,
    TEST_SESSION,
    create_database,
    database_state,
    database_url_for,
    discard_database,
    start_faber,
    wait_for,
)
from faber_core.workflow import take_backup

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
GATE_LOCK = 4242


def execute(url: str, script: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script)


def available_extensions(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM pg_available_extensions").fetchall()}


@pytest.fixture
def production(project, context_for, plugins, database_url):
    """``(context factory, backup)``: a project whose production database is ``database_url``."""
    project_dir = project({})

    def backup():
        context = context_for(project_dir, "create-backup")
        return take_backup(context, plugins, "test", MigrationState(tool="sqlfiles", local=[], records=[]))

    return project_dir, backup


def test_restore_brings_back_every_object_kind_pg_dump_dumps(production, context_for, plugins, database_url):
    if not {"pgcrypto", "hstore", "citext"} <= available_extensions(database_url):
        pytest.skip("the server lacks the contrib extensions pgcrypto, hstore and citext")
    project_dir, backup = production
    execute(
        database_url,
        """
        CREATE EXTENSION pgcrypto;
        CREATE SCHEMA ext; CREATE EXTENSION hstore SCHEMA ext;
        CREATE TABLE accounts (id int PRIMARY KEY, secret bytea DEFAULT gen_random_bytes(4), tags ext.hstore);
        CREATE TABLE orders (id int PRIMARY KEY, account int REFERENCES accounts(id));
        INSERT INTO accounts (id, tags) SELECT g, 'a=>1' FROM generate_series(1, 50) g;
        INSERT INTO orders SELECT g, g FROM generate_series(1, 50) g;
        SELECT lo_from_bytea(0, 'the first large object'), lo_from_bytea(0, 'the second');
        CREATE PUBLICATION accounts_pub FOR TABLE accounts;
        CREATE SUBSCRIPTION mirror CONNECTION 'host=127.0.0.1 dbname=faber_nowhere' PUBLICATION elsewhere
            WITH (connect = false);
        CREATE FUNCTION note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
        CREATE EVENT TRIGGER note_ddl ON ddl_command_end EXECUTE FUNCTION note_ddl();
        """,
    )
    try:
        at_backup = database_state(database_url)
        record = backup()
    except BaseException:
        drop_subscriptions(database_url)
        raise
    # Everything changes afterwards, including an event trigger that refuses all DDL.
    execute(
        database_url,
        """
        SELECT lo_put(oid, 0, 'CHANGED') FROM pg_largeobject_metadata;
        SELECT lo_from_bytea(0, 'a third, made after the backup');
        DROP PUBLICATION accounts_pub; CREATE PUBLICATION accounts_pub FOR TABLE orders;
        CREATE PUBLICATION later_pub;
        ALTER SUBSCRIPTION mirror SET (slot_name = NONE);
        CREATE SUBSCRIPTION later_sub CONNECTION 'host=127.0.0.1 dbname=faber_nowhere' PUBLICATION p
            WITH (connect = false);
        CREATE EXTENSION citext;
        ALTER TABLE orders DROP CONSTRAINT orders_account_fkey;
        DELETE FROM accounts WHERE id > 10;
        CREATE FUNCTION refuse_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'no DDL allowed'; END $$;
        CREATE EVENT TRIGGER refuse_ddl ON ddl_command_start EXECUTE FUNCTION refuse_ddl();
        """,
    )
    assert database_state(database_url) != at_backup

    try:
        outcome = pg_dump.faber_backup_restore(context=context_for(project_dir, "rollback"), backup=record)
        restored = database_state(database_url)
    finally:
        drop_subscriptions(database_url)

    assert outcome.status == "success"
    assert restored == at_backup


def drop_subscriptions(url: str) -> None:
    """Subscriptions keep their database from being dropped after the test."""
    with psycopg.connect(url, autocommit=True) as conn:
        for (name,) in conn.execute(
            "SELECT subname FROM pg_subscription"
            " WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall():
            conn.execute(f'ALTER SUBSCRIPTION "{name}" DISABLE')
            conn.execute(f'ALTER SUBSCRIPTION "{name}" SET (slot_name = NONE)')
            conn.execute(f'DROP SUBSCRIPTION "{name}"')


def test_restored_tables_have_planner_statistics(production, context_for, database_url):
    project_dir, backup = production
    execute(database_url, "CREATE TABLE items (id int); INSERT INTO items SELECT generate_series(1, 500)")
    record = backup()

    pg_dump.faber_backup_restore(context=context_for(project_dir, "rollback"), backup=record)

    with psycopg.connect(database_url) as conn:
        reltuples = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'items'::regclass").fetchone()[0]
        stats = conn.execute("SELECT count(*) FROM pg_stats WHERE tablename = 'items'").fetchone()[0]
    assert reltuples == 500 and stats == 1


def test_a_failing_restore_changes_nothing_and_says_why(production, context_for, database_url):
    project_dir, backup = production
    owner = f"faber_test_owner_{os.getpid()}_{time.monotonic_ns()}"
    execute(
        database_url,
        f"CREATE ROLE {owner}; CREATE TABLE items (id int PRIMARY KEY); ALTER TABLE items OWNER TO {owner};"
        "INSERT INTO items VALUES (1)",
    )
    record = backup()
    # The archive gives `items` to a role that no longer exists when it is restored.
    try:
        execute(
            database_url,
            f"INSERT INTO items VALUES (2); REASSIGN OWNED BY {owner} TO CURRENT_USER; DROP ROLE {owner};"
            "CREATE TABLE since_backup (id int)",
        )
        before = database_state(database_url)

        with pytest.raises(RestoreFailed) as raised:
            pg_dump.faber_backup_restore(context=context_for(project_dir, "rollback"), backup=record)
    finally:
        execute(database_url, f"DROP ROLE IF EXISTS {owner}")

    assert "rolled back" in raised.value.message and f'role "{owner}" does not exist' in raised.value.message
    assert database_state(database_url) == before


# Kills ----------------------------------------------------------------------------------


def restore_sessions(url: str) -> list[tuple]:
    with psycopg.connect(url, application_name=TEST_SESSION) as conn:
        return conn.execute(
            "SELECT pid, wait_event_type, wait_event FROM pg_stat_activity"
            " WHERE application_name LIKE 'faber restore %%' AND datname = current_database()"
        ).fetchall()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_kill_in_the_middle_of_a_restore_leaves_the_database_as_before(
    production, database_url, signum, postgres_admin_url
):
    project_dir, backup = production
    execute(
        database_url,
        f"""
        CREATE FUNCTION gate(int) RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_advisory_xact_lock_shared({GATE_LOCK}); RETURN true; END $$;
        CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL);
        CREATE TABLE orders (id int PRIMARY KEY, account int REFERENCES accounts(id));
        CREATE TABLE zz_gated (id int CHECK (public.gate(id)));
        INSERT INTO accounts SELECT g, 'user' || g FROM generate_series(1, 2000) g;
        INSERT INTO orders SELECT g, g FROM generate_series(1, 2000) g;
        INSERT INTO zz_gated VALUES (1), (2);
        """,
    )
    record = backup()
    execute(
        database_url,
        "DELETE FROM orders WHERE id > 1000; DELETE FROM accounts WHERE id > 1500;"
        "CREATE TABLE since_backup (note text); INSERT INTO since_backup VALUES ('kept if the restore aborts')",
    )
    before = database_state(database_url)

    with psycopg.connect(database_url, autocommit=True, application_name=TEST_SESSION) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", [GATE_LOCK])
        faber = start_faber(
            # The rows changed since the backup are the test's own: it means to discard them.
            *("rollback", "production", "--to", record.id, "--yes", "--discard-app-writes", "--json"),
            cwd=project_dir,
            env=SQLFILES,
        )
        try:
            # The restore is inside its transaction, loading zz_gated after accounts and orders.
            wait_for(
                lambda: any(event == "advisory" for _, _, event in restore_sessions(database_url)),
                "the restore to reach the gated table",
            )
            faber.send_signal(signum)
            faber.wait(timeout=60)
        finally:
            if faber.poll() is None:
                faber.kill()
            out, err = faber.communicate()
        # The server ends the killed client's session by itself (client_connection_check_interval).
        wait_for(lambda: not restore_sessions(database_url), "the restore session to end", timeout=20)

    assert faber.returncode != 0
    assert database_state(database_url) == before
    assert CANARY_PASSWORD not in (out + err).decode()
    if signum != signal.SIGKILL:
        # The document says the restore was stopped before its COMMIT: nothing of it remains.
        document = json.loads(out)
        said = json.dumps(document)
        assert (faber.returncode, document["code"]) == (130, "INTERRUPTED"), said
        result = document["result"]
        assert result["interrupted_by"] == signum.name, said
        assert result["restore_committed"] is False and result["rollback_status"] == "failed", said
        assert result["backup_id"] == record.id, said


def test_psql_killed_in_the_middle_of_a_restore_is_named_and_the_database_is_as_before(production, database_url):
    """The kernel's out-of-memory killer (or an operator's kill -9) ends the restore's psql, faber
    alive: psql says nothing, so the error says how it ended, and the restore rolled back."""
    project_dir, backup = production
    execute(
        database_url,
        f"""
        CREATE FUNCTION gate(int) RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_advisory_xact_lock_shared({GATE_LOCK}); RETURN true; END $$;
        CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL);
        CREATE TABLE zz_gated (id int CHECK (public.gate(id)));
        INSERT INTO accounts SELECT g, 'user' || g FROM generate_series(1, 2000) g;
        INSERT INTO zz_gated VALUES (1), (2);
        """,
    )
    record = backup()
    execute(database_url, "CREATE TABLE since_backup (note text)")
    before = database_state(database_url)

    with psycopg.connect(database_url, autocommit=True, application_name=TEST_SESSION) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", [GATE_LOCK])
        faber = start_faber(
            "rollback", "production", "--to", record.id, "--yes", "--json", cwd=project_dir, env=SQLFILES
        )
        try:
            wait_for(
                lambda: any(event == "advisory" for _, _, event in restore_sessions(database_url)),
                "the restore to reach the gated table",
            )
            psql = next(child for child in descendants(faber.pid) if child.command.split()[0].endswith("/psql"))
            os.kill(psql.pid, signal.SIGKILL)
            stdout, stderr = faber.communicate(timeout=60)
        finally:
            if faber.poll() is None:
                faber.kill()
                faber.communicate()

    assert faber.returncode == 8, stderr
    document = json.loads(stdout)
    assert document["code"] == "RESTORE_FAILED"
    assert document["result"]["restore_error"] == "psql killed by SIGKILL (Killed)", document
    assert "failed and was rolled back: psql killed by SIGKILL" in document["error"]
    assert database_state(database_url) == before


def deployed_with_a_gated_table(faber_project, run_faber, database_url: str) -> tuple:
    """``(project_dir, env, backup_id)``: 001_users deployed to production, its backup holding a
    table whose restore waits for the advisory lock GATE_LOCK, and 002_orders pending."""
    environment = {"database_url_env": "APP_URL", "lock_wait_seconds": 1, "query_lock_timeout_seconds": 1}
    database = {"migration_tool": "sqlfiles", "environments": {"production": environment}}
    env = {**SQLFILES, "APP_URL": database_url}
    execute(
        database_url,
        f"""
        CREATE FUNCTION gate(int) RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_advisory_xact_lock_shared({GATE_LOCK}); RETURN true; END $$;
        CREATE TABLE zz_gated (id int CHECK (public.gate(id)));
        INSERT INTO zz_gated VALUES (1), (2);
        """,
    )
    project_dir = faber_project({"database": database}, {"migrations/001_users.sql": "CREATE TABLE users (id int);"})
    deployed = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project_dir), env=env)
    assert deployed.returncode == 0, deployed.output
    (project_dir / "migrations" / "002_orders.sql").write_text("CREATE TABLE orders (id int);")
    return project_dir, env, deployed.json["result"]["backup_id"]


def test_a_deploy_during_a_rollback_is_refused_as_locked_naming_the_rollback(faber_project, run_faber, database_url):
    """The rollback's restore keeps every table it brings back locked until it commits, the
    migration tool's history among them: a deploy's status read before faber's lock waited on it
    and failed as a blocked read (exit 3). It waits for the rollback as for faber's lock, and is
    refused as during another deploy (exit 7), naming the rollback."""
    project_dir, env, backup_id = deployed_with_a_gated_table(faber_project, run_faber, database_url)

    with psycopg.connect(database_url, autocommit=True, application_name=TEST_SESSION) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", [GATE_LOCK])
        rollback_args = ("rollback", "production", "--to", backup_id, "--yes")
        rollback = FaberProcess.start(project_dir, *rollback_args, "--discard-app-writes", "--json", env=env)
        try:
            rollback.wait_for("lock.acquired")
            rollback.wait_until(
                lambda: any(event == "advisory" for _, _, event in restore_sessions(database_url)),
                what="the restore to reach the gated table",
            )
            run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project_dir), env=env)
            gate.execute("SELECT pg_advisory_unlock(%s)", [GATE_LOCK])
            assert rollback.finish(timeout=60) == 0, rollback.stdout() + rollback.stderr()
        finally:
            rollback.stop_everything()

    assert (run.returncode, run.json["code"]) == (7, "LOCKED"), run.output
    assert "Another faber run holds the lock on this database: faber rollback production" in run.json["error"]
    assert application_tables(database_url) == ["zz_gated"]


def blocked_read(url: str) -> int | None:
    """The session whose read waits on a table's lock (not the restore's, which waits on the gate)."""
    with psycopg.connect(url, application_name=TEST_SESSION) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'relation'"
            " AND application_name NOT LIKE 'faber restore %%'"
        ).fetchone()
    return row[0] if row else None


def session_waiting(url: str, pid: int) -> bool:
    with psycopg.connect(url, application_name=TEST_SESSION) as conn:
        return bool(
            conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event = 'relation'", [pid]).fetchone()
        )


def test_a_deploy_whose_status_read_outlasted_a_rollback_that_just_ended_reads_again_and_deploys(
    faber_project, run_faber, database_url
):
    """The deploy's status read waited on the rollback's restore past query_lock_timeout_seconds,
    and the rollback ended before the deploy looked for another run holding faber's lock: the
    lock was free, and the deploy failed as a blocked read (exit 3). The run that blocked it is
    gone: it reads again. The deploy is held (SIGSTOP) from its read's timeout until the rollback
    ended, the moment the race leaves it otherwise."""
    project_dir, env, backup_id = deployed_with_a_gated_table(faber_project, run_faber, database_url)

    with psycopg.connect(database_url, autocommit=True, application_name=TEST_SESSION) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", [GATE_LOCK])
        rollback_args = ("rollback", "production", "--to", backup_id, "--yes")
        rollback = FaberProcess.start(project_dir, *rollback_args, "--discard-app-writes", "--json", env=env)
        deploy = None
        try:
            rollback.wait_for("lock.acquired")
            rollback.wait_until(
                lambda: any(event == "advisory" for _, _, event in restore_sessions(database_url)),
                what="the restore to reach the gated table",
            )
            deploy = FaberProcess.start(project_dir, "migrate", "production", "--yes", "--json", env=env)
            reader = deploy.wait_until(
                lambda: blocked_read(database_url), what="the status read to wait on the restore"
            )
            os.kill(deploy.pid, signal.SIGSTOP)
            wait_for(lambda: not session_waiting(database_url, reader), "the read's lock_timeout", timeout=30)
            gate.execute("SELECT pg_advisory_unlock(%s)", [GATE_LOCK])
            assert rollback.finish(timeout=60) == 0, rollback.stdout() + rollback.stderr()
            os.kill(deploy.pid, signal.SIGCONT)
            code = deploy.finish(timeout=120)
        finally:
            rollback.stop_everything()
            if deploy is not None:
                deploy.stop_everything()

    assert code == 0, deploy.stdout() + deploy.stderr()
    result = json.loads(deploy.stdout())["result"]
    assert [m["name"] for m in result["migrations"]] == ["001_users", "002_orders"]
    assert application_tables(database_url) == ["orders", "sqlfiles_migrations", "users", "zz_gated"]


def test_a_mixed_case_faber_schema_is_left_out_of_backups_so_restores_keep_working(
    faber_project, run_faber, database_url
):
    """pg_dump folds the unquoted letters of --exclude-schema to lower case: a faber_schema named
    Faber was dumped with the data, and every restore after the first failed on it (exit 8)."""
    environment = {"database_url_env": "APP_URL", "lock_wait_seconds": 5}
    database = {"migration_tool": "sqlfiles", "faber_schema": "Faber", "environments": {"production": environment}}
    project_dir = faber_project(
        {"database": database},
        {"migrations/001_users.sql": "CREATE TABLE users (id int);", "migrations/002_broken.sql": "SELECT 1/0;"},
    )
    env = {**SQLFILES, "APP_URL": database_url}

    for attempt in (1, 2):
        run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project_dir), env=env)

        assert run.returncode == 6, run.output
        assert run.json["result"]["rollback_status"] == "success", run.output
        with psycopg.connect(database_url) as conn:
            assert conn.execute('SELECT count(*) FROM "Faber".faber_deployments').fetchone() == (attempt,)


@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_backup_is_never_restored_into_another_database(
    faber_project, run_faber, database_url, postgres_admin_url, restore_mode
):
    """The environment's URL now names another database (a CI secret set to the wrong one, a
    database moved): restoring there would replace everything it holds with a copy of the first.
    The backup's manifest says which database it is of; the mysqldump provider refused already."""
    environment = {"database_url_env": "APP_URL", "backup": {"provider": "pg_dump", "restore_mode": restore_mode}}
    project_dir = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}}
    )
    backup_args = ("backup", "production", "--json", "--cwd", str(project_dir))
    backed_up = run_faber(*backup_args, env={**SQLFILES, "APP_URL": database_url})
    assert backed_up.returncode == 0, backed_up.output
    other = create_database(postgres_admin_url)
    try:
        other_url = database_url_for(postgres_admin_url, other, password=CANARY_PASSWORD)
        execute(other_url, "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1), (2);")
        before = database_state(other_url)

        rollback_args = ("rollback", "production", "--yes", "--json", "--cwd", str(project_dir))
        run = run_faber(*rollback_args, env={**SQLFILES, "APP_URL": other_url})

        assert (run.returncode, run.json["code"]) == (8, "RESTORE_FAILED"), run.output
        assert f"is of database {database_url.rsplit('/', 1)[1]}, not {other}" in run.json["error"]
        assert database_state(other_url) == before
    finally:
        discard_database(postgres_admin_url, other)


def faber_schema_rows(url: str, schema: str) -> dict[str, int]:
    """The row count of each of faber's tables in ``schema``."""
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1",
            [schema],
        ).fetchall()
        count = "SELECT count(*) FROM {}"
        return {
            table: conn.execute(sql.SQL(count).format(sql.Identifier(schema, table))).fetchone()[0]
            for (table,) in tables
        }


def application_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        ]


@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_restore_keeps_faber_s_schema_under_its_new_name_and_its_old_one(
    faber_project, run_faber, database_url, postgres_admin_url, restore_mode
):
    """faber_schema renamed from faber to ops after a backup: the restore kept only the schema the
    backup had left out (faber) and dropped ops, with the history and write baselines recorded
    there since. Both are faber's and the archive holds neither: each survives as it is."""
    environment = {"database_url_env": "APP_URL", "backup": {"provider": "pg_dump", "restore_mode": restore_mode}}
    database = {"migration_tool": "sqlfiles", "environments": {"production": environment}}
    env = {**SQLFILES, "APP_URL": database_url}
    project_dir = faber_project({"database": database}, {"migrations/001_users.sql": "CREATE TABLE users (id int);"})
    deployed = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project_dir), env=env)
    assert deployed.returncode == 0, deployed.output
    faber_project(
        {"database": {**database, "faber_schema": "ops"}},
        {"migrations/002_orders.sql": "CREATE TABLE orders (id int);"},
        root=project_dir,
    )
    deployed_again = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project_dir), env=env)
    assert deployed_again.returncode == 0, deployed_again.output
    old_schema = faber_schema_rows(database_url, "faber")
    assert faber_schema_rows(database_url, "ops")["faber_deployments"] == 1

    try:
        rollback_args = ("rollback", "production", "--to", deployed.json["result"]["backup_id"], "--yes")
        run = run_faber(*rollback_args, "--discard-app-writes", "--json", "--cwd", str(project_dir), env=env)

        assert run.returncode == 0, run.output
        assert "orders" not in application_tables(database_url)
        assert faber_schema_rows(database_url, "faber") == old_schema
        history = run_faber("history", "production", "--json", "--cwd", str(project_dir), env=env)
        assert [run["operation"] for run in history.json["result"]["deployments"]] == ["rollback", "deploy-migrations"]
    finally:
        drop_swap_databases(postgres_admin_url, database_url)


@pytest.mark.parametrize("archive_format", ["custom", "directory"])
@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_backup_holding_the_faber_schema_in_use_again_restores_and_keeps_it(
    faber_project, run_faber, database_url, postgres_admin_url, restore_mode, archive_format
):
    """faber_schema renamed from faber to ops and back: the backup taken meanwhile left ops out and
    holds faber, the schema in use again. The archive's copy of it is older than the one in the
    database; the restore leaves it out, as it leaves out the schema the backup excluded, instead
    of failing on CREATE SCHEMA faber (exit 8, database unchanged)."""
    backup = {"provider": "pg_dump", "restore_mode": restore_mode, "format": archive_format, "jobs": 2}
    environment = {"database_url_env": "APP_URL", "backup": backup}
    database = {"migration_tool": "sqlfiles", "environments": {"production": environment}}
    env = {**SQLFILES, "APP_URL": database_url}
    project_dir = faber_project({"database": database}, {"migrations/001_users.sql": "CREATE TABLE users (id int);"})

    def deploy(faber_schema: str, migration: str, sql_text: str) -> str:
        """The deploy's backup id."""
        faber_project(
            {"database": {**database, "faber_schema": faber_schema}},
            {f"migrations/{migration}.sql": sql_text},
            root=project_dir,
        )
        run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project_dir), env=env)
        assert run.returncode == 0, run.output
        return run.json["result"]["backup_id"]

    deploy("faber", "001_users", "CREATE TABLE users (id int);")
    # pg_restore --list does not quote names: the application's schema "faber x" is not faber's.
    execute(database_url, 'CREATE SCHEMA "faber x"; CREATE TABLE "faber x".notes AS SELECT 1 AS id')
    # The backup of this deploy leaves ops out and holds faber, with the first deploy's row.
    backup_id = deploy("ops", "002_orders", "CREATE TABLE orders (id int);")
    deploy("faber", "003_invoices", "CREATE TABLE invoices (id int);")
    faber_rows, ops_rows = faber_schema_rows(database_url, "faber"), faber_schema_rows(database_url, "ops")
    assert faber_rows["faber_deployments"] == 2

    try:
        rollback_args = ("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json")
        run = run_faber(*rollback_args, "--cwd", str(project_dir), env=env)

        assert run.returncode == 0, run.output
        assert application_tables(database_url) == ["sqlfiles_migrations", "users"]
        assert faber_schema_rows(database_url, "faber x") == {"notes": 1}
        # Both of faber's schemas as they were before the restore, plus the rollback's own row.
        assert faber_schema_rows(database_url, "faber") == {**faber_rows, "faber_deployments": 3}
        assert faber_schema_rows(database_url, "ops") == ops_rows
    finally:
        drop_swap_databases(postgres_admin_url, database_url)


def drop_swap_databases(admin_url: str, url: str) -> None:
    target = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in (restoring_name(target), previous_name(target)):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def privileges_and_comments(url: str) -> dict[str, object]:
    """The grants and comment of the schema public, and the grants of a built-in function."""
    with psycopg.connect(url) as conn:
        public = conn.execute(
            "SELECT nspacl::text, obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'public'"
        ).fetchone()
        (sleep,) = conn.execute(
            "SELECT proacl::text FROM pg_proc WHERE oid = 'pg_sleep(float8)'::regprocedure"
        ).fetchone()
        return {"public": public, "pg_sleep": sleep}


@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_restore_brings_back_grants_and_comments_on_the_public_schema_and_built_in_functions(
    faber_project, run_faber, database_url, postgres_admin_url, restore_mode
):
    """The archive's grants and comments whose object it does not create (the schema public, a
    built-in function) have no parent in the archive: pg_restore --exclude-schema, which makes the
    restore selective, leaves them out of the list. Revoked privileges came back (public's USAGE
    for every role) and the application's comment was lost."""
    environment = {"database_url_env": "APP_URL", "backup": {"provider": "pg_dump", "restore_mode": restore_mode}}
    database = {"migration_tool": "sqlfiles", "environments": {"production": environment}}
    env = {**SQLFILES, "APP_URL": database_url}
    project_dir = faber_project({"database": database}, {"migrations/001_users.sql": "CREATE TABLE users (id int);"})
    execute(
        database_url,
        "REVOKE ALL ON SCHEMA public FROM PUBLIC; COMMENT ON SCHEMA public IS 'the application''s tables';"
        " REVOKE EXECUTE ON FUNCTION pg_sleep(float8) FROM PUBLIC",
    )
    at_backup = privileges_and_comments(database_url)
    backed_up = run_faber("backup", "production", "--json", "--cwd", str(project_dir), env=env)
    assert backed_up.returncode == 0, backed_up.output
    execute(database_url, "GRANT EXECUTE ON FUNCTION pg_sleep(float8) TO PUBLIC")
    assert privileges_and_comments(database_url) != at_backup

    try:
        rollback_args = ("rollback", "production", "--to", backed_up.json["result"]["id"], "--yes")
        run = run_faber(*rollback_args, "--discard-app-writes", "--json", "--cwd", str(project_dir), env=env)

        assert run.returncode == 0, run.output
        assert privileges_and_comments(database_url) == at_backup
    finally:
        drop_swap_databases(postgres_admin_url, database_url)


def default_privileges(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT pg_get_userbyid(defaclrole), defaclnamespace::regnamespace::text, defaclobjtype,"
            " defaclacl::text FROM pg_default_acl ORDER BY 1, 2, 3"
        ).fetchall()


def test_a_restore_brings_back_the_default_privileges_of_the_backup_and_no_others(
    production, context_for, database_url
):
    # Default privileges for the whole database (not for one schema) live outside every schema, so
    # the restore's schema drops do not take them away.
    project_dir, backup = production
    execute(
        database_url,
        """
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'faber_test_reader') THEN
                CREATE ROLE faber_test_reader;
            END IF;
        END $$;
        ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO faber_test_reader;
        ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO faber_test_reader;
        """,
    )
    at_backup = default_privileges(database_url)
    record = backup()
    execute(
        database_url,
        """
        ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM faber_test_reader;
        ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO PUBLIC;
        ALTER DEFAULT PRIVILEGES GRANT USAGE ON TYPES TO faber_test_reader;
        ALTER DEFAULT PRIVILEGES GRANT ALL ON SCHEMAS TO faber_test_reader;
        """,
    )
    assert default_privileges(database_url) != at_backup

    outcome = pg_dump.faber_backup_restore(context=context_for(project_dir, "rollback"), backup=record)

    assert outcome.status == "success"
    assert default_privileges(database_url) == at_backup


def test_a_deploy_user_who_may_not_drop_the_schemas_is_refused_at_the_backup_and_restores_once_it_may(
    faber_project, run_faber, database_url, postgres_admin_url
):
    """A database owned by an administrator, the deploy user granted CREATE on it and on public: the
    in-place restore (which drops every schema and creates it again) failed at the first failed
    migration, exit 8, the migration left half applied. Refused at the backup instead, nothing
    applied; once the user owns public, the failed deploy is rolled back."""
    role = f"faber_deployer_{uuid.uuid4().hex[:8]}"
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    as_admin = database_url_for(postgres_admin_url, database)
    as_superuser(postgres_admin_url, sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        as_superuser(
            as_admin,
            sql.SQL(
                "GRANT CREATE, TEMPORARY ON DATABASE {db} TO {r}; GRANT USAGE, CREATE ON SCHEMA public TO {r}"
            ).format(db=sql.Identifier(database), r=sql.Identifier(role)),
        )
        environment = {"database_url_env": "DEPLOY_URL", "protected": True, "require_committed_migrations": False}
        project = faber_project(
            {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}},
            {"migrations/001_items.sql": "CREATE TABLE items (id int);"},
        )
        env = {"DEPLOY_URL": database_url.replace("://postgres:", f"://{role}:"), **SQLFILES}

        refused = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
        as_superuser(as_admin, sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
        as_superuser(as_admin, sql.SQL("CREATE PUBLICATION faber_test_admins"))  # the prelude drops it too
        refused_again = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
        as_superuser(as_admin, sql.SQL("DROP PUBLICATION faber_test_admins"))
        # A table an administrator created beside the application's: the restore gives it back to its
        # owner, which the user may not (it failed at the first failed migration, exit 8).
        as_superuser(
            as_admin,
            sql.SQL("CREATE TABLE public.audit_dba (id int); GRANT SELECT ON public.audit_dba TO {}").format(
                sql.Identifier(role)
            ),
        )
        refused_for_its_owner = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
        as_superuser(as_admin, sql.SQL("DROP TABLE public.audit_dba"))
        deployed = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
        (project / "migrations/002_half.sql").write_text("CREATE TABLE half (id int);")
        (project / "migrations/003_broken.sql").write_text("SELECT 1/0;")
        failed = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

        assert (refused.returncode, refused.json["code"]) == (4, "BACKUP_FAILED"), refused.output
        assert f"the user {role} may not drop schema public (owner pg_database_owner)" in refused.json["error"]
        assert "ALTER SCHEMA <schema> OWNER TO" in refused.json["recovery"]["suggestions"][0]
        assert refused_again.returncode == 4, refused_again.output
        assert (
            f"the user {role} may not drop publication faber_test_admins (owner postgres)"
            in refused_again.json["error"]
        )
        assert (refused_for_its_owner.returncode, refused_for_its_owner.json["code"]) == (4, "BACKUP_FAILED")
        assert "table public.audit_dba (owner postgres)" in refused_for_its_owner.json["error"]
        assert f"OWNER TO {role}" in refused_for_its_owner.json["recovery"]["suggestions"][0]
        assert deployed.returncode == 0, deployed.output
        assert failed.json["result"]["rollback_status"] == "success", failed.output
        with psycopg.connect(as_admin) as conn:
            restored = conn.execute("SELECT to_regclass('half'), to_regclass('items') IS NOT NULL").fetchone()
            assert restored == (None, True)
            owner = "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'"
            assert conn.execute(owner).fetchone()[0] == role
    finally:
        as_superuser(as_admin, sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(role)))
        as_superuser(as_admin, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        as_superuser(postgres_admin_url, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def as_superuser(url: str, statement: sql.Composable) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)
