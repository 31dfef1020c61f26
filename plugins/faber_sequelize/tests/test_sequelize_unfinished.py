"""What faber's record of a deploy killed inside a Sequelize migration (which runs outside a
transaction) says once a person has dealt with it, and what the record costs a deploy."""

from __future__ import annotations

import json
import signal

import pytest
from faber_core.testing.faults import FaberProcess, KilledInsideAMigration

COPY = "20240103000000-copy.js"
LATER = "20240104000000-later.js"


def ten_rows_ledger(killed: KilledInsideAMigration) -> None:
    killed.query("CREATE TABLE ledger (id int)")
    killed.query("INSERT INTO ledger VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10)")


def killed_inside_copy(killed: KilledInsideAMigration, project, run_faber) -> None:
    """``faber migrate staging`` killed (SIGKILL) inside COPY, once its copy of the ledger committed."""
    with killed.connect() as holder:
        killed.take(holder)
        run = FaberProcess.start(project, "migrate", "staging", "--yes", "--json")
        try:
            run.wait_until(lambda: killed._waiting(holder), what="the migration to wait", timeout=60)
            run.kill(signal.SIGKILL)
            assert run.wait(30) == -signal.SIGKILL
        finally:
            run.stop_everything()
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
            run.wait_until(lambda: killed._waiting(holder), what="the migration to wait", timeout=60)
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
