"""faber killed while the Prisma handler applies a migration (faber_core.testing.faults), and the
restore the next runs name for what it left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from faber_core.postgres.locks import faber_lock_key
from faber_core.testing.faults import (
    WAITING_ON_ADVISORY_LOCK,
    FaberProcess,
    KilledInsideAMigration,
    event_matcher,
    holdable_migration,
    session_settings,
    wait_for_server_release,
)

ENVIRONMENT = "production"
URL_ENV = "PRISMA_FAULTS_DATABASE_URL"
INIT = (
    'CREATE TABLE "accounts" ("id" SERIAL PRIMARY KEY, "email" TEXT NOT NULL);\n'
    'INSERT INTO "accounts" ("email") SELECT \'user\' || g FROM generate_series(1, 1000) g;\n'
)
SERVER_BOUND = 5
"""Seconds the server may take to notice a dead client and end its sessions and locks."""


@pytest.fixture
def project(faber_project, database_url):
    """``make(migrations, **settings) -> Path``: a Prisma project on the test's database, 0_init deployed."""

    def make(migrations: dict[str, str], **settings) -> Path:
        environment = {"database_url_env": URL_ENV, "lint": "warn", "backup_before_migrate": False, **settings}
        config = {"database": {"migration_tool": "prisma", "environments": {ENVIRONMENT: environment}}}
        directory = faber_project(config, {"prisma/migrations/0_init/migration.sql": INIT})
        assert faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json").finish() == 0
        for name, sql in migrations.items():
            path = directory / "prisma/migrations" / name / "migration.sql"
            path.parent.mkdir(parents=True)
            path.write_text(sql)
        return directory

    return make


def faber(project: Path, url: str, *args: str, env: dict[str, str] | None = None) -> FaberProcess:
    return FaberProcess.start(project, *args, env={URL_ENV: url, **(env or {})})


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def kill_inside(run: FaberProcess, url: str, name: str) -> None:
    """SIGKILL faber once migration ``name`` started and a session of it sleeps on the server."""
    run.wait_for(event_matcher("migration.started", name=name))
    with psycopg.connect(url, autocommit=True) as conn:
        run.wait_until(lambda: sleeping_session(conn), what=f"{name} held")
    run.kill(signal.SIGKILL)
    assert run.wait(5) is not None


def sleeping_session(conn: psycopg.Connection) -> bool:
    query = "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
    return conn.execute(query).fetchone() is not None


def prisma_rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT migration_name, finished_at IS NOT NULL, rolled_back_at IS NOT NULL FROM _prisma_migrations"
            " ORDER BY started_at"
        ).fetchall()


def test_a_killed_transactional_migration_leaves_no_history_row_and_the_next_deploy_applies_it(project, database_url):
    name = "1_tier"
    directory = project({name: holdable_migration(name, 'ALTER TABLE "accounts" ADD COLUMN "tier" INTEGER;')})
    run = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json", env=session_settings(hold=name))
    try:
        kill_inside(run, database_url, name)
    finally:
        run.stop_everything()

    assert not wait_for_server_release(database_url, database_name(database_url), within=SERVER_BOUND)
    assert prisma_rows(database_url) == [("0_init", True, False)]
    again = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert again.finish() == 0, again.stdout()
    assert prisma_rows(database_url) == [("0_init", True, False), (name, True, False)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_transactional_migration_is_known_to_have_rolled_back(project, database_url, signum):
    """Its history row was written in its transaction: the interrupt rolls back both, and the
    handler says so with the rows the attempt wrote. Stopped in the first migration, nothing of the
    run remains (no restore); stopped in the second, the restore is not refused for faber's own
    history row, which the default policy would otherwise blame on the application."""
    first, second = "1_tier", "2_rank"
    directory = project(
        {
            first: holdable_migration(first, 'ALTER TABLE "accounts" ADD COLUMN "tier" INTEGER;'),
            second: holdable_migration(second, 'ALTER TABLE "accounts" ADD COLUMN "rank" INTEGER;'),
        },
        backup_before_migrate=True,
    )
    for held, rollback_status, applied in ((first, "not_needed", []), (second, "success", [first])):
        run = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json", env=session_settings(hold=held))
        try:
            run.wait_for(event_matcher("migration.started", name=held))
            with psycopg.connect(database_url, autocommit=True) as conn:
                run.wait_until(lambda: sleeping_session(conn), what=f"{held} held")
            run.kill(signum)
            code = run.wait(60)
        finally:
            run.stop_everything()

        assert code == 130, run.stderr()[-2000:]
        result = json.loads(run.stdout())["result"]
        assert (result["failed_migration"], result["transaction_rolled_back"]) == (held, True)
        assert (result["applied_migrations"], result["rollback_status"]) == (applied, rollback_status)
        assert prisma_rows(database_url) == [("0_init", True, False)]  # the second run's restore removed the first
    again = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert again.finish() == 0, again.stdout()
    assert [row[0] for row in prisma_rows(database_url)] == ["0_init", first, second]


def test_a_lost_lock_stops_the_next_migration_inside_its_own_transaction(project, database_url):
    """faber's lock session is terminated while 1_tier runs and another session takes the lock (as a
    second deploy would). The check of the lock runs in 2_rank's own transaction, before its
    statements: nothing of 2_rank runs nor is recorded, the deploy says the lock was lost and does
    not restore its backup next to the other run."""
    first, second = "1_tier", "2_rank"
    directory = project(
        {
            first: holdable_migration(first, 'ALTER TABLE "accounts" ADD COLUMN "tier" INTEGER;'),
            second: 'ALTER TABLE "accounts" ADD COLUMN "rank" INTEGER;',
        },
        backup_before_migrate=True,
    )
    database = database_name(database_url)
    run = faber(
        directory,
        database_url,
        "migrate",
        ENVIRONMENT,
        "--yes",
        "--json",
        env=session_settings(hold=first, hold_seconds=3),
    )
    try:
        run.wait_for(event_matcher("migration.started", name=first))
        with psycopg.connect(database_url, autocommit=True) as conn:
            run.wait_until(lambda: sleeping_session(conn), what=f"{first} held")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                [database, f"faber deploy-migrations {ENVIRONMENT}"],
            )
            # pg_terminate_backend only signals: the lock is free once that session has ended.
            run.wait_until(
                lambda: conn.execute("SELECT pg_try_advisory_lock(%s)", [faber_lock_key(database)]).fetchone()[0],
                what="faber's lock taken by another session",
            )
            code = run.wait(60)
    finally:
        run.stop_everything()

    assert code == 7, run.stderr()[-2000:]
    document = json.loads(run.stdout())
    assert document["code"] == "LOCKED"
    assert document["error"].startswith(f"faber's lock on the database was lost before migration {second}")
    result = document["result"]
    assert (result["applied_migrations"], result["remaining_migrations"]) == ([first], [second])
    assert (result["failed_migration"], result["transaction_rolled_back"]) == (second, True)
    assert result["rollback_initiated"] is False and result["rollback_status"] == "lock_lost"
    assert prisma_rows(database_url) == [("0_init", True, False), (first, True, False)]
    with psycopg.connect(database_url) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts' ORDER BY 1"
        ).fetchall()
    assert [name for (name,) in columns] == ["email", "id", "tier"]


def test_a_killed_non_transactional_migration_is_reported_with_what_a_person_must_do(project, database_url):
    """``CREATE INDEX CONCURRENTLY`` cannot run in a transaction: killed inside it, it leaves an
    unfinished history row (and possibly an invalid index). The next deploy must refuse and say
    how to resolve it; done as told, the deploy after that converges."""
    name = "1_email_index"
    sql = (
        f"-- faults:{name}\n"
        'CREATE INDEX CONCURRENTLY "accounts_email_idx" ON "accounts" ("email");\n'
        "SELECT pg_sleep(CASE current_setting('faults.hold', true) WHEN '1_email_index' THEN 60 ELSE 0 END);\n"
    )
    directory = project({name: sql})
    run = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json", env=session_settings(hold=name))
    try:
        kill_inside(run, database_url, name)
    finally:
        run.stop_everything()
    assert not wait_for_server_release(database_url, database_name(database_url), within=SERVER_BOUND)

    refused = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    code = refused.finish()
    document = json.loads(refused.stdout())
    assert code in (3, 6), refused.stdout()
    assert name in json.dumps(document), "the unfinished migration is not named"
    advice = " ".join(document.get("recovery", {}).get("suggestions", []))
    assert f"faber resolve {ENVIRONMENT} --rolled-back {name}" in advice, advice
    assert "NAME" not in advice

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute('DROP INDEX IF EXISTS "accounts_email_idx"')
    resolved = faber(directory, database_url, "resolve", ENVIRONMENT, "--rolled-back", name, "--json")
    assert resolved.finish() == 0, resolved.stdout()
    again = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert again.finish() == 0, again.stdout()
    with psycopg.connect(database_url) as conn:
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_email_idx'::regclass"
        ).fetchone()
    assert valid == (True,)


def test_resolve_applied_killed_as_it_records_the_migration_leaves_it_failed_not_pending(project, database_url):
    """``--applied`` marks the failed attempt rolled back and records a finished row. Before, the
    two committed apart: faber killed between them left the migration merely pending, and the
    next deploy ran again what a person had completed by hand."""
    name = "1_email_index"
    sql = 'CREATE INDEX CONCURRENTLY "accounts_email_idx" ON "accounts" ("email");\nSELECT 1 / 0;\n'
    directory = project({name: sql})
    failed = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert failed.finish() == 6, failed.stdout()
    assert prisma_rows(database_url)[-1] == (name, False, False)
    hold = 0x5EED
    with psycopg.connect(database_url, autocommit=True) as holder:
        # The finished row's INSERT waits on the test's lock: faber is killed after the failed
        # attempt was marked rolled back, before the row saying it was applied is in.
        holder.execute(
            "CREATE FUNCTION hold_insert() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN PERFORM pg_advisory_xact_lock({hold}); RETURN NEW; END $$;"
            "CREATE TRIGGER hold_insert BEFORE INSERT ON _prisma_migrations"
            " FOR EACH ROW EXECUTE FUNCTION hold_insert()"
        )
        holder.execute("SELECT pg_advisory_lock(%s)", [hold])
        run = faber(directory, database_url, "resolve", ENVIRONMENT, "--applied", name, "--json")
        try:
            run.wait_until(lambda: holder.execute(WAITING_ON_ADVISORY_LOCK, [hold]).fetchone(), what="the INSERT held")
            run.kill(signal.SIGKILL)
            assert run.wait(5) == -signal.SIGKILL
        finally:
            run.stop_everything()
        # The server ends the dead client's session (here at once, not when the lock frees).
        holder.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted",
            [hold],
        )
        released = wait_for_server_release(
            database_url, database_name(database_url), within=SERVER_BOUND, ignore_pids=[holder.info.backend_pid]
        )
        assert not released
        holder.execute("DROP TRIGGER hold_insert ON _prisma_migrations")

    status = faber(directory, database_url, "status", ENVIRONMENT, "--json")
    status.finish()
    assert json.loads(status.stdout())["result"]["failed"] == [name], status.stdout()
    resolved = faber(directory, database_url, "resolve", ENVIRONMENT, "--applied", name, "--json")
    assert resolved.finish() == 0, resolved.stdout()
    deployed = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert deployed.finish() == 0, deployed.stdout()
    # Not run again: the failed attempt, marked rolled back, and the row saying it was applied.
    assert prisma_rows(database_url)[1:] == [(name, False, True), (name, True, False)]


LONG_ALTER = 'ALTER TABLE "accounts" ADD COLUMN "z" INTEGER; SELECT pg_sleep(20);'


def test_reads_work_again_soon_after_faber_dies_inside_a_long_prisma_migration(project, database_url):
    """Through the Prisma handler: the killed migration's session and its
    ACCESS EXCLUSIVE lock must not outlive faber by the 20 s the statement would still run."""
    directory = project({"1_long": LONG_ALTER})
    run = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    try:
        kill_inside(run, database_url, "1_long")
        started = time.monotonic()
        readable = None
        while readable is None and time.monotonic() - started < SERVER_BOUND:
            try:
                with psycopg.connect(database_url, autocommit=True, options="-c lock_timeout=300") as conn:
                    conn.execute('SELECT count(*) FROM "accounts"')
                readable = time.monotonic() - started
            except psycopg.errors.LockNotAvailable:
                pass
    finally:
        run.stop_everything()
    assert readable is not None, f"accounts still locked {SERVER_BOUND}s after SIGKILL"


def test_a_connection_lost_inside_a_non_transactional_migration_goes_through_the_rollback(project, database_url):
    """The migration session is terminated after a non-transactional migration committed a table:
    not an internal error with an empty result, but a failed migration with the backup id, what
    committed and the restore that undid it."""
    name = "1_extra"
    sql = (
        f"-- faults:{name}\n"
        'CREATE TABLE "extra" ("id" INTEGER);\n'
        'CREATE INDEX CONCURRENTLY "accounts_email_idx" ON "accounts" ("email");\n'
        f"SELECT pg_sleep(CASE current_setting('faults.hold', true) WHEN '{name}' THEN 60 ELSE 0 END);\n"
    )
    # Its history row is written outside a transaction, unmeasured, but in _prisma_migrations,
    # which the handler declares as its bookkeeping: the default "refuse" restores.
    directory = project({name: sql}, backup_before_migrate=True, restore_with_app_writes="refuse")
    run = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json", env=session_settings(hold=name))
    try:
        run.wait_for(event_matcher("migration.started", name=name))
        with psycopg.connect(database_url, autocommit=True) as conn:
            run.wait_until(lambda: sleeping_session(conn), what=f"{name} held")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event = 'PgSleep'"
            )
        code = run.finish(timeout=120)
    finally:
        run.stop_everything()

    assert code == 6, run.stdout()
    document = json.loads(run.stdout())
    assert document["code"] == "MIGRATION_FAILED"
    assert document["error"].startswith(f"Lost the connection to the database during migration {name}")
    result = document["result"]
    assert result["failed_migration"] == name and result["backup_id"]
    assert result["applied_migrations"] == [] and result["remaining_migrations"] == [name]
    assert result["rollback_initiated"] is True and result["rollback_status"] == "success"
    assert result["writes_since_backup"]["attribution"] == "unknown"
    assert result["writes_since_backup"]["status"] == "none"
    assert document["recovery"]["suggestions"][0].startswith(f"Database rolled back to {result['backup_id']}")
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('extra'), to_regclass('accounts_email_idx')").fetchone() == (
            None,
            None,
        )
    assert prisma_rows(database_url) == [("0_init", True, False)]


def test_a_concurrent_index_that_fails_before_anything_ran_is_not_restored(project, database_url):
    """A lone CREATE INDEX CONCURRENTLY failing on duplicates commits nothing but leaves an invalid
    index: no restore (it would discard the application's writes for nothing); the index and the
    commands that clean up are named."""
    name = "1_email_key"
    directory = project(
        {name: 'CREATE UNIQUE INDEX CONCURRENTLY "accounts_email_key" ON "accounts" ("email");'},
        backup_before_migrate=True,
    )
    with psycopg.connect(database_url) as conn:
        conn.execute("""INSERT INTO "accounts" ("email") VALUES ('user1')""")  # a duplicate email

    run = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    code = run.finish()

    assert code == 6, run.stdout()
    document = json.loads(run.stdout())
    result = document["result"]
    assert result["failed_migration"] == name and result["transaction_rolled_back"] is False
    assert result["rollback_initiated"] is False and result["rollback_status"] == "not_needed"
    assert result["backup_id"] and result["invalid_indexes"] == ["public.accounts_email_key"]
    assert "rollback.started" not in run.kinds()
    suggestions = document["recovery"]["suggestions"]
    assert suggestions[0].startswith("Database unchanged: the failed migration stopped at its first statement")
    assert "Drop the invalid index left behind: DROP INDEX CONCURRENTLY public.accounts_email_key;" in suggestions
    assert any(f"faber resolve {ENVIRONMENT} --rolled-back {name}" in s for s in suggestions), suggestions
    assert not any("faber rollback" in s for s in suggestions)
    assert "rollback_command" not in document["recovery"]
    with psycopg.connect(database_url) as conn:
        # Not restored: the application's row is still there.
        assert conn.execute("""SELECT count(*) FROM "accounts" WHERE "email" = 'user1'""").fetchone() == (2,)

    # Done as told, the next deploy goes on (the duplicate removed first).
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute('DROP INDEX CONCURRENTLY "public"."accounts_email_key"')
        conn.execute("""DELETE FROM "accounts" WHERE "id" = (SELECT max("id") FROM "accounts")""")
    assert faber(directory, database_url, "resolve", ENVIRONMENT, "--rolled-back", name, "--json").finish() == 0
    again = faber(directory, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert again.finish() == 0, again.stdout()


# A migration a deploy is killed inside, each with its failed row left in _prisma_migrations, on
# PostgreSQL (a CREATE INDEX CONCURRENTLY makes it run statement by statement) and MySQL/MariaDB.
LEDGER = "CREATE TABLE ledger (id int);\nINSERT INTO ledger VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10);\n"
FIRST, COPY = "1_first", "2_copy"


SHIFTED_CLOCK = """
import datetime, os

_SHIFT = datetime.timedelta(seconds=float(os.environ["FABER_TEST_CLOCK_SHIFT_SECONDS"]))


class _ShiftedClock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return super().now(tz) + _SHIFT


datetime.datetime = _ShiftedClock
"""
"""A ``sitecustomize`` for faber's processes: their ``datetime.now()`` is that of a machine whose
clock is ``FABER_TEST_CLOCK_SHIFT_SECONDS`` from the database server's (the same machine's)."""


class KilledPrismaDeploy:
    """A Prisma project on ``engine`` (``staging``, 0_init with a ten-row ledger deployed), whose
    next deploy is killed (SIGKILL) inside COPY once COPY's copy of the ledger committed. Every
    faber command runs with its clock ``clock_shift`` seconds from the server's."""

    def __init__(self, request: pytest.FixtureRequest, engine: str, *, clock_shift: float = 0, **settings) -> None:
        on_mysql = engine == "mysql"
        self.env: dict[str, str] = {}
        if clock_shift:
            site = request.getfixturevalue("tmp_path") / "shifted-clock"
            site.mkdir()
            (site / "sitecustomize.py").write_text(SHIFTED_CLOCK)
            path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
            self.env = {"PYTHONPATH": path, "FABER_TEST_CLOCK_SHIFT_SECONDS": str(clock_shift)}
        self.killed = KilledInsideAMigration(
            request.getfixturevalue("mysql_database_url" if on_mysql else "database_url")
        )
        make = request.getfixturevalue("mysql_prisma_project" if on_mysql else "prisma_project")
        self.project = make({"0_init": LEDGER}, lint="off", lock_wait_seconds=60, **settings)
        self.run_faber = request.getfixturevalue("run_faber")
        self.add_migration = request.getfixturevalue("add_migration")
        self.concurrently = "" if on_mysql else "CREATE INDEX CONCURRENTLY ledger_id ON ledger (id);\n"
        assert self.faber("migrate", "staging", "--yes").returncode == 0

    def faber(self, *args: str):
        return self.run_faber(*args, "--json", "--cwd", str(self.project), env=self.env)

    def kill_inside_copy(self, *, after_first: bool = False) -> FaberProcess:
        """Deploy COPY (FIRST before it when ``after_first``) and SIGKILL faber inside COPY."""
        if after_first:
            self.add_migration(self.project, FIRST, "CREATE TABLE first_done (id int);\n")
        copy = f"{self.killed.copy_statement};\n{self.concurrently}{self.killed.hold_statement};\n"
        self.add_migration(self.project, COPY, copy)
        run, code = self.killed.deploy_stopped_inside(self.project, signal.SIGKILL, env=self.env)
        assert code == -signal.SIGKILL
        assert self.killed.ledger() == 20  # the copy committed
        return run

    def backup_now(self) -> str:
        """``faber backup staging``: the id of the backup it took."""
        taken = self.faber("backup", "staging")
        assert taken.returncode == 0, taken.output
        return json.loads(taken.stdout)["result"]["id"]

    def advice(self) -> list[str]:
        """The recovery suggestions of ``faber status`` (COPY failed), which the next ``faber migrate``
        (stopped at its health check) gives as well."""
        status = self.faber("status", "staging")
        assert status.returncode == 6, status.output
        assert json.loads(status.stdout)["result"]["failed"] == [COPY]
        suggestions = json.loads(status.stdout)["recovery"]["suggestions"]
        again = self.faber("migrate", "staging", "--yes")
        assert again.returncode == 3, again.output
        told = json.loads(again.stdout)["recovery"]["suggestions"]
        assert [s for s in suggestions if "backup" in s.lower()] == [s for s in told if "backup" in s.lower()]
        return suggestions


ENGINES = pytest.mark.parametrize("engine", ["postgresql", "mysql"])


@ENGINES
def test_the_restore_named_for_a_killed_prisma_migration_is_of_the_backup_taken_before_it_began(request, engine):
    """The killed deploy took a backup; one more was taken after the kill (faber backup), with the
    same migrations applied. Before, faber named the newer one, which holds what COPY committed."""
    deploy = KilledPrismaDeploy(request, engine, backup_before_migrate=True)
    run = deploy.kill_inside_copy()
    before = run.wait_for("backup.created")["data"]["backup_id"]
    later = deploy.backup_now()

    advice = " ".join(deploy.advice())
    assert f"faber rollback staging --to {before}" in advice, advice
    assert later not in advice, advice
    restored = deploy.faber("rollback", "staging", "--to", before, "--yes", "--discard-app-writes")
    assert restored.returncode == 0, restored.output
    assert deploy.killed.ledger() == 10
    status = deploy.faber("status", "staging")
    assert status.returncode == 0, status.output
    assert json.loads(status.stdout)["result"]["pending"] == [COPY]


@ENGINES
@pytest.mark.parametrize("clock_shift", [-3600, 3600], ids=["faber-an-hour-behind", "faber-an-hour-ahead"])
def test_the_restore_named_for_a_killed_prisma_migration_is_the_same_whatever_faber_s_clock_says(
    request, engine, clock_shift
):
    """started_at is the server's time, a backup's faber's: with faber's clock an hour behind the
    server's, a raw comparison took the backup taken after the kill for one taken before it; an
    hour ahead, it took the killed deploy's own backup for one taken after it, and named none."""
    deploy = KilledPrismaDeploy(request, engine, clock_shift=clock_shift, backup_before_migrate=True)
    run = deploy.kill_inside_copy()
    before = run.wait_for("backup.created")["data"]["backup_id"]
    later = deploy.backup_now()

    advice = " ".join(deploy.advice())
    assert f"faber rollback staging --to {before}" in advice, advice
    assert later not in advice, advice


@ENGINES
def test_the_restore_named_for_a_prisma_deploy_killed_after_committing_others_says_what_it_also_undoes(request, engine):
    """The killed deploy committed FIRST before COPY: its own backup lacks FIRST, and the backup
    taken after the kill holds exactly what is applied. Before, faber named the later one."""
    deploy = KilledPrismaDeploy(request, engine, backup_before_migrate=True)
    run = deploy.kill_inside_copy(after_first=True)
    before = run.wait_for("backup.created")["data"]["backup_id"]
    later = deploy.backup_now()

    advice = " ".join(deploy.advice())
    assert f"faber rollback staging --to {before}" in advice, advice
    assert f"restoring it also undoes {FIRST}, applied since" in advice, advice
    assert later not in advice, advice


@ENGINES
def test_no_backup_is_named_for_a_killed_prisma_migration_when_none_was_taken_before_it_began(request, engine):
    """The killed deploy took no backup; the only one was taken after the kill: the advice says no
    backup undoes it instead of naming that one."""
    deploy = KilledPrismaDeploy(request, engine, backup_before_migrate=False)
    deploy.kill_inside_copy()
    later = deploy.backup_now()

    advice = deploy.advice()
    assert f"No backup undoes it: none was taken before {COPY} began" in " ".join(advice), advice
    assert not any(later in suggestion or "faber rollback" in suggestion for suggestion in advice), advice


def test_a_deploy_inside_a_migration_after_its_lock_session_ended_stops_the_next_run_before_its_backup(
    prisma_project, run_faber, database_url, tmp_path
):
    """The first deploy is inside a migration, in its transaction, when its session holding faber's
    lock is ended; a second deploy waiting for faber's lock takes it then. It used to take a backup
    (with the first run's migration still open, to commit after it) and wait for Prisma's lock in
    its apply step: its "rollback available" backup would undo that migration too. The applier's
    session holds faber's migration lock: the second run stops with LOCKED before its backup."""
    killed = KilledInsideAMigration(database_url)
    name = "20240102000000_copy"
    project = prisma_project(
        {"20240101000000_ledger": "CREATE TABLE ledger (id int);\nINSERT INTO ledger SELECT generate_series(1, 10);"},
        backup_before_migrate=True,
        lock_wait_seconds=5,  # the second run waits that long for the first one's migration session
        lock_timeout_seconds=0,  # the held migration waits as long as the test holds it
        lint="off",
    )
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    copy = project / "prisma/migrations" / name
    copy.mkdir()
    (copy / "migration.sql").write_text(f"{killed.copy_statement};\n{killed.hold_statement};\n")
    other_project = shutil.copytree(project, tmp_path / "other", symlinks=True)

    with killed.lock_session_ended_inside(project, other_project) as (_first, second):
        document = json.loads(second.stdout())
        assert (second.finish(), document["code"]) == (7, "LOCKED"), second.stdout() + second.stderr()[-3000:]
        assert document["result"]["migration_sessions"], document
        assert "backup.created" not in second.stderr(), second.stderr()[-3000:]
    assert killed.ledger() == 20  # copied once
    applied = killed.query("SELECT migration_name FROM _prisma_migrations ORDER BY started_at")
    assert applied == [("20240101000000_ledger",), (name,)], applied
