"""What faber's record of a deploy killed inside a Sequelize migration (which runs outside a
transaction) says once a person has dealt with it, and what the record costs a deploy; whose
record a run takes for a deploy still under way, whichever environment name wrote it, and what a
run says when it cannot read it."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from faber_core import api
from faber_core.engines.mysql import faber_lock_name_on_server
from faber_core.postgres.locks import HOLDING, session_lock_key
from faber_core.testing.faults import FaberProcess, KilledInsideAMigration
from faber_core.testing.fixtures import CANARY_PASSWORD
from psycopg import sql

FIRST = "20240102000000-first.js"
COPY = "20240103000000-copy.js"
LATER = "20240104000000-later.js"


def ten_rows_ledger(killed: KilledInsideAMigration) -> None:
    killed.query("CREATE TABLE ledger (id int)")
    killed.query("INSERT INTO ledger VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10)")


def killed_inside_copy(killed: KilledInsideAMigration, project, run_faber) -> None:
    """``faber migrate staging`` killed (SIGKILL) inside COPY, once its copy of the ledger committed."""
    _, code = killed.deploy_stopped_inside(project, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert killed.ledger() == 20


def test_resolving_the_migration_a_killed_deploy_was_in_clears_that_deploy_s_record(
    sequelize_migration, sequelize_project, database_url, run_faber
):
    """The killed run had recorded both its pending migrations. Before, resolving the one it was in
    named the next one, which it never started, as left in part by that killed run."""
    killed = KilledInsideAMigration(database_url)
    project = sequelize_project(
        {
            COPY: sequelize_migration(killed.copy_statement, killed.hold_statement),
            LATER: sequelize_migration("CREATE TABLE later (id int)"),
        },
        fixture_migrations=False,
        lint="off",
    )
    ten_rows_ledger(killed)
    killed_inside_copy(killed, project, run_faber)

    killed.query("DELETE FROM ledger WHERE id > 100")
    resolved = run_faber("resolve", "staging", "--rolled-back", COPY, "--json", "--cwd", str(project))
    assert resolved.returncode == 0, resolved.output

    status = run_faber("status", "staging", "--json", "--cwd", str(project))
    assert status.returncode == 0, status.output
    result = json.loads(status.stdout)["result"]
    assert result["failed"] == []
    deployed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert deployed.returncode == 0, deployed.output
    assert killed.ledger() == 20


def sequelize_cli_status(project: Path, url: str) -> dict[str, str]:
    """``sequelize db:migrate:status`` of ``project``'s staging section on ``url``: each migration's
    ``up`` or ``down``, as sequelize-cli reads SequelizeMeta (the fixture project installs it)."""
    shown = subprocess.run(
        [str(project / "node_modules" / ".bin" / "sequelize"), "db:migrate:status", "--env", "staging"],
        cwd=project,
        env={**os.environ, "APP_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return {name: state for state, name in re.findall(r"^(up|down) (\S+)$", shown.stdout, re.MULTILINE)}


def killed_inside_copy_before_later(killed: KilledInsideAMigration, make_project, sequelize_migration, run_faber):
    """A project with COPY and LATER pending, its deploy killed inside COPY once the copy committed."""
    project = make_project(
        {
            COPY: sequelize_migration(killed.copy_statement, killed.hold_statement),
            LATER: sequelize_migration("CREATE TABLE later (id int)"),
        },
        fixture_migrations=False,
        lint="off",
    )
    ten_rows_ledger(killed)
    killed_inside_copy(killed, project, run_faber)
    return project


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_resolve_applied_records_a_migration_completed_by_hand_as_sequelize_cli_does(
    sequelize_migration, run_faber, request, engine
):
    """Before, Sequelize could not mark a migration applied: an operator who completed by hand the
    migration a killed deploy was in had no way to say so."""
    url, make_project = engine_fixtures(request, engine)
    killed = KilledInsideAMigration(url)
    project = killed_inside_copy_before_later(killed, make_project, sequelize_migration, run_faber)

    resolved = run_faber("resolve", "staging", "--applied", COPY, "--json", "--cwd", str(project))

    assert resolved.returncode == 0, resolved.output
    assert (resolved.json["result"]["failed"], resolved.json["result"]["pending"]) == ([], [LATER])
    killed.next_runs_see_it_applied(run_faber, project, LATER)
    assert sequelize_cli_status(project, url) == {COPY: "up", LATER: "up"}
    assert killed.query(f"SELECT count(*) FROM {killed.record_table}") == [(0,)]


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_resolve_applied_refuses_a_migration_sequelize_does_not_know_or_has_applied(
    sequelize_migration, run_faber, request, engine
):
    url, make_project = engine_fixtures(request, engine)
    project = make_project({COPY: sequelize_migration("SELECT 1")}, lint="off")
    deployed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert deployed.returncode == 0, deployed.output
    before = sequelize_cli_status(project, url)

    unknown = run_faber("resolve", "staging", "--applied", "20240109000000-nowhere.js", "--json", "--cwd", str(project))
    applied = run_faber("resolve", "staging", "--applied", COPY, "--json", "--cwd", str(project))

    assert (unknown.returncode, unknown.json["code"]) == (2, "CONFIG_INVALID"), unknown.output
    assert "sequelize has no migration named 20240109000000-nowhere.js" in unknown.json["error"]
    assert (applied.returncode, applied.json["code"]) == (2, "CONFIG_INVALID"), applied.output
    assert f"Migration {COPY} is already applied" in applied.json["error"]
    assert "nothing was changed" in unknown.json["error"] and "nothing was changed" in applied.json["error"]
    assert sequelize_cli_status(project, url) == before


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_resolve_applied_writes_the_config_s_storage_table(sequelize_migration, run_faber, request, engine):
    """``migrationStorageTableName``: sequelize-cli keeps its history there, created if missing."""
    url, make_project = engine_fixtures(request, engine)
    section = {"use_env_variable": "APP_DATABASE_URL", "dialect": engine, "migrationStorageTableName": "app_meta"}
    project = make_project(
        {COPY: sequelize_migration("CREATE TABLE never_run (id int)")},
        files={"db/config.json": json.dumps({"staging": section})},
        fixture_migrations=False,
        lint="off",
    )

    resolved = run_faber("resolve", "staging", "--applied", COPY, "--json", "--cwd", str(project))

    assert resolved.returncode == 0, resolved.output
    assert resolved.json["result"]["pending"] == []
    assert sequelize_cli_status(project, url) == {COPY: "up"}
    query = request.getfixturevalue("query" if engine == "postgres" else "mysql_query")
    assert query("SELECT name FROM app_meta") == [(COPY,)]
    tables = "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('SequelizeMeta', 'never_run')"
    assert query(tables) == [(0,)]


def test_rolled_back_is_refused_for_a_migration_no_killed_deploy_left(
    sequelize_migration, sequelize_project, run_faber
):
    project = sequelize_project({COPY: sequelize_migration("SELECT 1")}, lint="off")

    resolved = run_faber("resolve", "staging", "--rolled-back", COPY, "--json", "--cwd", str(project))

    assert (resolved.returncode, resolved.json["code"]) == (2, "CONFIG_INVALID"), resolved.output
    assert f"sequelize cannot mark migration {COPY} rolled back" in resolved.json["error"], resolved.output
    assert "Report this to the plugin's authors" not in resolved.output, resolved.output


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_resolve_applied_killed_once_sequelize_recorded_it_leaves_every_migration_as_it_is(
    sequelize_migration, run_faber, request, engine
):
    """faber killed (SIGKILL) between SequelizeMeta's row and removing its record of the killed
    deploy. Before, the record then named LATER, which that deploy never started, as the migration
    it was killed in: the next deploy stopped there."""
    url, make_project = engine_fixtures(request, engine)
    killed = KilledInsideAMigration(url)
    project = killed_inside_copy_before_later(killed, make_project, sequelize_migration, run_faber)

    killed.resolve_applied_killed_once_the_tool_recorded(
        project, COPY, lambda: sequelize_cli_status(project, url)[COPY] == "up"
    )

    killed.next_runs_see_it_applied(run_faber, project, LATER)


def test_a_signal_while_a_deploy_that_committed_forgets_its_record_ends_with_its_report(
    sequelize_migration, sequelize_project, database_url
):
    """Once its migrations committed and were checked, the deploy removes its record of them; a
    SIGTERM then raised out of that removal. Before, the run ended INTERRUPTED (exit 130), not
    saying the migration had committed; now it ends with the deploy's report."""
    import psycopg

    killed = KilledInsideAMigration(database_url)
    killed.query("CREATE TABLE ledger (id int)")
    project = sequelize_project(
        {COPY: sequelize_migration(killed.copy_statement, killed.hold_statement)},
        fixture_migrations=False,
        lint="off",
    )
    record = "faber.faber_unfinished_migrations"
    removal_waiting = (
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query LIKE 'DELETE FROM %%faber_unfinished_migrations%%'"
    )
    with killed.connect() as holder, psycopg.connect(database_url) as keeper:
        killed.take(holder)
        run = FaberProcess.start(project, "migrate", "staging", "--yes", "--json")
        try:
            run.wait_until(lambda: killed.waiting(holder), what="the migration to wait", timeout=60)
            keeper.execute(f"SELECT 1 FROM {record} FOR UPDATE")  # the removal waits for these rows
            holder.execute("SELECT pg_advisory_unlock(%s)", [killed.key])
            run.wait_until(lambda: holder.execute(removal_waiting).fetchone(), what="the removal to wait")
            run.kill(signal.SIGTERM)
            keeper.rollback()
            code = run.wait(30)
        finally:
            run.stop_everything()
    document = json.loads(run.stdout())
    assert (code, document["status"]) == (0, "success"), run.stdout()
    assert killed.query(f"SELECT count(*) FROM {record}") == [(0,)]


def test_the_restore_named_for_a_killed_deploy_is_of_a_backup_taken_before_it(
    sequelize_migration, sequelize_project, database_url, run_faber
):
    """The deploy took no backup of its own; one was taken before it and one after it was killed,
    both with the same migrations applied. Before, faber named the newest, which holds what the
    killed migration committed, as 'taken just before' it ran; and restoring the one before left
    the record, so the next deploy still stopped."""
    killed = KilledInsideAMigration(database_url)
    project = sequelize_project(
        {COPY: sequelize_migration(killed.copy_statement, killed.hold_statement)},
        fixture_migrations=False,
        lint="off",
    )

    def faber(*args: str):
        return run_faber(*args, "--json", "--cwd", str(project))

    ten_rows_ledger(killed)
    before = faber("backup", "staging")
    assert before.returncode == 0, before.output
    before_id = json.loads(before.stdout)["result"]["id"]
    killed_inside_copy(killed, project, run_faber)
    after = faber("backup", "staging")
    assert after.returncode == 0, after.output

    status = faber("status", "staging")
    assert status.returncode == 6, status.output
    suggestions = " ".join(json.loads(status.stdout)["recovery"]["suggestions"])
    assert f"faber rollback staging --to {before_id}" in suggestions, suggestions
    restored = faber("rollback", "staging", "--to", before_id, "--yes", "--discard-app-writes")
    assert restored.returncode == 0, restored.output
    assert killed.ledger() == 10
    status = faber("status", "staging")
    assert status.returncode == 0, status.output
    assert json.loads(status.stdout)["result"]["pending"] == [COPY]


def test_no_backup_is_named_for_a_killed_deploy_when_none_was_taken_before_it(
    sequelize_migration, sequelize_project, database_url, run_faber
):
    """The deploy took no backup of its own, and the only backup was taken after it was killed:
    the advice says no backup undoes it (before, it said nothing of a restore)."""
    killed = KilledInsideAMigration(database_url)
    project = sequelize_project(
        {COPY: sequelize_migration(killed.copy_statement, killed.hold_statement)},
        fixture_migrations=False,
        lint="off",
    )

    def faber(*args: str):
        return run_faber(*args, "--json", "--cwd", str(project))

    ten_rows_ledger(killed)
    killed_inside_copy(killed, project, run_faber)
    after = faber("backup", "staging")
    assert after.returncode == 0, after.output
    after_id = json.loads(after.stdout)["result"]["id"]

    status = faber("status", "staging")
    assert status.returncode == 6, status.output
    suggestions = json.loads(status.stdout)["recovery"]["suggestions"]
    assert f"No backup undoes it: none was taken before {COPY} began" in " ".join(suggestions), suggestions
    assert not any(after_id in s or "faber rollback" in s for s in suggestions), suggestions


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_the_restore_named_for_a_deploy_killed_after_committing_others_is_the_backup_it_took(
    sequelize_migration, run_faber, request, engine
):
    """The deploy applied FIRST, then was killed inside COPY: no backup holds exactly the
    migrations applied now. Before, status and the next deploy named no restore at all, though the
    deploy's own backup undoes all of it (found on a real history killed in its 15th migration)."""
    prefix = "" if engine == "postgres" else "mysql_"
    killed = KilledInsideAMigration(request.getfixturevalue(f"{prefix}database_url"))
    project = request.getfixturevalue(f"{prefix}sequelize_project")(
        {
            FIRST: sequelize_migration("CREATE TABLE first_done (id int)"),
            COPY: sequelize_migration(killed.copy_statement, killed.hold_statement),
        },
        fixture_migrations=False,
        lint="off",
        backup_before_migrate=True,
    )

    def faber(*args: str):
        return run_faber(*args, "--json", "--cwd", str(project))

    ten_rows_ledger(killed)
    killed_inside_copy(killed, project, run_faber)
    backups = faber("backups", "staging")
    assert backups.returncode == 0, backups.output
    [taken] = json.loads(backups.stdout)["result"]["backups"]

    status = faber("status", "staging")
    assert status.returncode == 6, status.output
    assert json.loads(status.stdout)["result"]["applied"] == [FIRST]
    suggestions = " ".join(json.loads(status.stdout)["recovery"]["suggestions"])
    assert f"faber rollback staging --to {taken['id']}" in suggestions, suggestions
    assert f"also undoes {FIRST}" in suggestions, suggestions
    again = faber("migrate", "staging", "--yes")
    assert again.returncode == 3, again.output
    assert f"faber rollback staging --to {taken['id']}" in " ".join(json.loads(again.stdout)["recovery"]["suggestions"])
    restored = faber("rollback", "staging", "--to", taken["id"], "--yes", "--discard-app-writes")
    assert restored.returncode == 0, restored.output
    assert killed.ledger() == 10
    assert killed.query(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'first_done'"
        " AND table_schema NOT IN ('information_schema', 'pg_catalog')"
    ) == [(0,)]
    status = faber("status", "staging")
    assert status.returncode == 0, status.output
    assert json.loads(status.stdout)["result"]["pending"] == [FIRST, COPY]


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_a_deploy_that_failed_inside_a_migration_outside_a_transaction_stops_the_next_one(
    sequelize_migration, run_faber, request, engine
):
    """The migration's copy committed, then its next statement failed; the deploy took no backup,
    so nothing was restored. Before, the next deploy ran the migration again from its start."""
    prefix = "" if engine == "postgres" else "mysql_"
    killed = KilledInsideAMigration(request.getfixturevalue(f"{prefix}database_url"))
    project = request.getfixturevalue(f"{prefix}sequelize_project")(
        {COPY: sequelize_migration(killed.copy_statement, "SELECT * FROM no_such_table")},
        fixture_migrations=False,
        lint="off",
    )

    def faber(*args: str):
        return run_faber(*args, "--json", "--cwd", str(project))

    ten_rows_ledger(killed)
    failed = faber("migrate", "staging", "--yes")
    assert json.loads(failed.stdout)["code"] == "MIGRATION_FAILED", failed.output
    assert killed.ledger() == 20
    again = faber("migrate", "staging", "--yes")
    assert json.loads(again.stdout)["code"] == "HEALTH_CHECK_FAILED", again.output
    assert f"{COPY} (a faber migrate was killed inside it, or it failed" in again.stdout
    assert killed.ledger() == 20  # not run again


def test_a_backup_whose_time_names_no_time_zone_is_compared_with_a_killed_deploy_s_record(
    sequelize_migration, sequelize_project, database_url, run_faber
):
    """A manifest written without a time zone (by hand, or a provider that gives naive times) is in
    UTC. Before, comparing it with the record's time raised TypeError out of faber status."""
    killed = KilledInsideAMigration(database_url)
    project = sequelize_project(
        {COPY: sequelize_migration(killed.copy_statement, killed.hold_statement)},
        fixture_migrations=False,
        lint="off",
    )

    def faber(*args: str):
        return run_faber(*args, "--json", "--cwd", str(project))

    ten_rows_ledger(killed)
    before = json.loads(faber("backup", "staging").stdout)["result"]
    manifest = (project / before["location"]).with_suffix(".json")
    written = json.loads(manifest.read_text())
    written["created_at"] = written["created_at"].replace("+00:00", "").replace("Z", "")
    manifest.write_text(json.dumps(written))
    killed_inside_copy(killed, project, run_faber)

    status = faber("status", "staging")
    assert status.returncode == 6, status.output
    assert f"faber rollback staging --to {before['id']}" in status.stdout
    restored = faber("rollback", "staging", "--to", before["id"], "--yes", "--discard-app-writes")
    assert restored.returncode == 0, restored.output


FIRST = "20240102000000-first.js"
KILLED_TEXT = f"{COPY} (a faber migrate was killed inside it, or it failed"


def engine_fixtures(request, engine: str) -> tuple[str, object]:
    """The test database's URL and the Sequelize project maker on ``engine``."""
    prefix = "" if engine == "postgres" else "mysql_"
    return request.getfixturevalue(f"{prefix}database_url"), request.getfixturevalue(f"{prefix}sequelize_project")


def server_start(conn) -> int:
    """When the MySQL/MariaDB server started, as Unix time (now less its uptime)."""
    uptime = int(conn.execute("SHOW GLOBAL STATUS LIKE 'Uptime'").fetchone()[1])
    return int(conn.execute("SELECT UNIX_TIMESTAMP()").fetchone()[0]) - uptime


def write_record(killed: KilledInsideAMigration, conn, lock_session: str, run_id: str = "run-killed-earlier") -> None:
    """A record of ``run_id``, killed inside COPY with its lock on ``lock_session``, as a deploy
    writes it before its apply step."""
    placeholders = ", ".join(["%s"] * 7)
    conn.execute(
        f"INSERT INTO {killed.record_table} (run_id, lock_session, environment, position, migration,"
        f" outside_transaction, before_run) VALUES ({placeholders})",
        [run_id, lock_session, "staging", 0, COPY, True, dt.datetime.now(dt.timezone.utc).isoformat()],
    )
    if killed.mysql:
        conn.commit()


def deployed_first(killed: KilledInsideAMigration, make_project, sequelize_migration, run_faber):
    """A project whose FIRST (outside a transaction, so recorded and forgotten: faber's table is
    there, empty) is deployed, and COPY pending; the ledger has ten rows."""
    ten_rows_ledger(killed)
    project = make_project(
        {FIRST: sequelize_migration("CREATE TABLE first (id int)")}, fixture_migrations=False, lint="off"
    )
    first = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert first.returncode == 0, first.output
    assert killed.query(f"SELECT count(*) FROM {killed.record_table}") == [(0,)]
    (project / "db/migrations" / COPY).write_text(sequelize_migration(killed.copy_statement))
    return project


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
@pytest.mark.parametrize("recorded_as", ["session", "id-alone"])
def test_a_killed_run_s_record_naming_the_lock_session_the_next_deploy_got_is_not_taken_for_a_live_run(
    sequelize_migration, run_faber, request, engine, recorded_as
):
    """MySQL/MariaDB connection ids start again from 1 as the server restarts: a deploy killed with
    the machine, the server restarted, the next deploy's lock session may get the id the killed
    one's record names. Here the record is written, as the deploy takes faber's lock, naming the
    session that took it (the server was not restarted, so even its start is the same; or the id
    alone, as an older faber wrote it). Before, that record looked like a run still deploying (its
    session held faber's lock) and the deploy ran the migration again."""
    url, make_project = engine_fixtures(request, engine)
    killed = KilledInsideAMigration(url)
    if recorded_as == "id-alone" and not killed.mysql:
        pytest.skip("a PostgreSQL record always names the session's start")
    project = deployed_first(killed, make_project, sequelize_migration, run_faber)
    written = []

    def on_lock_taken(event) -> None:
        if event.kind != "lock.acquired":
            return
        with killed.connect() as conn:
            if killed.mysql:
                holder = conn.execute("SELECT IS_USED_LOCK(%s)", [faber_lock_name_on_server(conn)]).fetchone()[0]
                session = f"{holder}@{server_start(conn)}" if recorded_as == "session" else str(holder)
            else:
                query = f"SELECT a.pid || '@' || extract(epoch FROM a.backend_start) {HOLDING}"
                session = conn.execute(query, {"key": session_lock_key(conn)}).fetchone()[0]
            write_record(killed, conn, session)
        written.append(session)

    document = api.deploy("staging", working_directory=project, yes=True, listeners=[on_lock_taken])

    assert written, "faber's lock was never taken"
    answer = document.model_dump(mode="json")
    assert answer.get("code") == "HEALTH_CHECK_FAILED", answer
    assert KILLED_TEXT in json.dumps(answer)
    assert killed.ledger() == 10  # not run again


def test_a_record_naming_a_session_id_of_an_earlier_server_start_is_not_the_run_holding_the_lock_now(
    sequelize_migration, mysql_sequelize_project, mysql_database_url, run_faber
):
    """A session of this server holds faber's lock (a run deploying now); records name its id. One
    written in a session of the server's previous start (an hour before this one: the server
    restarted since) is a killed run's, whose migration ``faber status`` reports as failed; one
    of this start, or one of an older faber naming the id alone, is the run deploying now's.
    Before, a record named the id alone, and any run given that id after a restart took it over."""
    killed = KilledInsideAMigration(mysql_database_url)
    project = deployed_first(killed, mysql_sequelize_project, sequelize_migration, run_faber)

    def failed() -> list[str]:
        status = run_faber("status", "staging", "--json", "--cwd", str(project))
        assert status.returncode in (0, 6), status.output
        return status.json["result"]["failed"]

    with killed.connect() as deploying, killed.connect() as conn:
        assert deploying.execute("SELECT GET_LOCK(%s, 0)", [faber_lock_name_on_server(deploying)]).fetchone()[0] == 1
        session_id = deploying.thread_id()
        started = server_start(conn)
        for lock_session, left_by_killed_run in (
            (f"{session_id}@{started}", False),
            (str(session_id), False),
            (f"{session_id}@{started - 3600}", True),
        ):
            conn.execute(f"DELETE FROM {killed.record_table}")
            write_record(killed, conn, lock_session)
            assert failed() == ([COPY] if left_by_killed_run else []), lock_session


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_a_deploy_killed_inside_a_migration_is_named_after_its_environment_is_renamed(
    sequelize_migration, run_faber, request, engine
):
    """The record is in the database the killed deploy changed, whatever the environment is called
    now. Before, runs read only the records of their own environment's name: renamed in faber's
    config, the next deploy ran the migration again (the ledger's rows copied twice)."""
    url, make_project = engine_fixtures(request, engine)
    killed = KilledInsideAMigration(url)
    project = make_project(
        {COPY: sequelize_migration(killed.copy_statement, killed.hold_statement)}, fixture_migrations=False, lint="off"
    )
    ten_rows_ledger(killed)
    killed_inside_copy(killed, project, run_faber)
    sessions = [row[0] for row in killed.query(f"SELECT lock_session FROM {killed.record_table}")]
    assert sessions and all(re.fullmatch(r"\d+@\d+(\.\d+)?", session) for session in sessions), sessions

    config_path = project / ".fractary/plugins/faber-db/config.json"
    config = json.loads(config_path.read_text())
    environments = config["database"]["environments"]
    environments["production"] = environments.pop("staging")
    config_path.write_text(json.dumps(config))

    def faber(*args: str):
        return run_faber(*args, "--json", "--cwd", str(project))

    status = faber("status", "production")
    assert status.returncode == 6, status.output
    assert status.json["result"]["failed"] == [COPY]
    again = faber("migrate", "production", "--yes")
    assert again.json["code"] == "HEALTH_CHECK_FAILED", again.output
    assert KILLED_TEXT in again.stdout
    assert killed.ledger() == 20  # not run again

    killed.query("DELETE FROM ledger WHERE id > 100")
    resolved = faber("resolve", "production", "--rolled-back", COPY)
    assert resolved.returncode == 0, resolved.output
    assert killed.query(f"SELECT count(*) FROM {killed.record_table}") == [(0,)]


def test_a_run_whose_user_may_not_read_the_record_says_the_check_could_not_run(
    sequelize_migration, sequelize_project, database_url, postgres_admin_url, run_faber, monkeypatch
):
    """A deploy failed inside COPY after its copy committed, so its record stays; the environment
    then reaches the database as a role that may use everything but that record. Before, status
    said nothing had failed and nothing of the check that could not run, and the deploy that ran
    COPY again said nothing either."""
    killed = KilledInsideAMigration(database_url)
    project = sequelize_project(
        {COPY: sequelize_migration(killed.copy_statement, "SELECT * FROM no_such_table")},
        fixture_migrations=False,
        lint="off",
    )
    ten_rows_ledger(killed)
    failed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert failed.json["code"] == "MIGRATION_FAILED", failed.output
    assert killed.query("SELECT count(*) FROM faber.faber_unfinished_migrations") == [(1,)]

    role = f"faber_reader_{uuid.uuid4().hex[:12]}"
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with psycopg.connect(database_url, autocommit=True) as owner:
            for grant in (
                "GRANT CONNECT ON DATABASE {db} TO {role}",
                "GRANT USAGE, CREATE ON SCHEMA public, faber TO {role}",
                "GRANT ALL ON ALL TABLES IN SCHEMA public, faber TO {role}",
                "GRANT ALL ON ALL SEQUENCES IN SCHEMA public, faber TO {role}",
                "REVOKE ALL ON faber.faber_unfinished_migrations FROM {role}",
            ):
                owner.execute(sql.SQL(grant).format(db=sql.Identifier(database), role=sql.Identifier(role)))
        parts = psycopg.conninfo.conninfo_to_dict(database_url)
        monkeypatch.setenv(
            "SEQUELIZE_TEST_DATABASE_URL",  # conftest.URL_ENV: the URL the project's staging reads
            f"postgresql://{role}:{CANARY_PASSWORD}@{parts['host']}:{parts.get('port', 5432)}/{database}",
        )

        status = run_faber("status", "staging", "--json", "--cwd", str(project))
        assert status.returncode == 0, status.output
        result = status.json["result"]
        assert result["failed"] == []
        unchecked = result["unfinished_migrations_unchecked"]
        assert unchecked and "could not run" in unchecked and "permission denied" in unchecked, result
        assert "could not run" in status.stderr
        human = run_faber("status", "staging", "--cwd", str(project))
        assert "could not run" in human.stdout, human.output

        (project / "db/migrations" / COPY).write_text(sequelize_migration(killed.copy_statement))
        deployed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
        assert deployed.returncode == 0, deployed.output
        unchecked = deployed.json["result"]["unfinished_migrations_unchecked"]
        assert unchecked and "permission denied" in unchecked, deployed.output
        for run in (status, human, deployed):
            assert CANARY_PASSWORD not in run.output
    finally:
        with psycopg.connect(database_url, autocommit=True) as owner:
            owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                [role],
            )
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
