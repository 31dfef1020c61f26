"""What a faber killed by SIGKILL during a pgdump-dir backup or restore leaves behind (a partial
archive, the restore's SQL of every row) is removed by the next run, as with faber's own provider."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg

from faber_core.support.scratch_folders import SETTLING_SECONDS
from faber_core.testing.faults import FaberProcess

USERS = "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n"
WAITING_FOR_A_LOCK = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"


def faber(run_faber, project, env, *args):
    return run_faber(*args, "--json", "--cwd", str(project), env=env)


def partials(project: Path) -> list[Path]:
    return list((project / ".faber").rglob("*.partial"))


def settled(folder: Path) -> None:
    """Date ``folder`` back past the sweep's settling time, as if its run had been killed a while ago."""
    past = time.time() - SETTLING_SECONDS - 5
    os.utime(folder, (past, past))


def killed_while_waiting(project, args: tuple[str, ...], env: dict, query, program: str) -> None:
    """Run ``faber ARGS`` and SIGKILL it once ``program`` (its pg_dump, its psql) waits for a table lock."""
    killed = FaberProcess.start(project, *args, env=env)
    try:
        killed.wait_until(lambda: query(WAITING_FOR_A_LOCK, [program])[0][0], what=f"{program} waiting for a lock")
        killed.kill(signal.SIGKILL)
        killed.wait(30)
    finally:
        killed.stop_everything()


def test_the_partial_archive_of_a_backup_killed_by_sigkill_is_removed_by_the_next_listing(
    pgdump_dir_project, run_faber, query, database_url
):
    project, env = pgdump_dir_project({"001_users": USERS})
    assert faber(run_faber, project, env, "migrate", "production", "--yes", "--skip-backup").returncode == 0
    folder = project / ".faber/backups/production"

    with psycopg.connect(database_url) as locker:
        # pg_dump waits for this lock with its archive begun, until faber is killed.
        locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        killed_while_waiting(project, ("backup", "production", "--json"), env, query, "pg_dump")
        locker.rollback()
    assert len(partials(project)) == 1  # the archive pg_dump had begun

    listing = faber(run_faber, project, env, "backups", "production")

    assert listing.returncode == 0, listing.output
    assert listing.json["result"]["backups"] == []
    assert partials(project) == []
    backup = faber(run_faber, project, env, "backup", "production")
    assert backup.returncode == 0, backup.output
    backup_id = backup.json["result"]["id"]
    assert sorted(path.name for path in folder.iterdir()) == [f"{backup_id}.dir", f"{backup_id}.json"]


def test_the_sql_of_a_restore_killed_by_sigkill_is_removed_by_the_next_rollback(
    pgdump_dir_project, run_faber, query, database_url, tmp_path
):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    project, env = pgdump_dir_project({"001_users": USERS})
    env = {**env, "TMPDIR": str(tmp)}
    assert faber(run_faber, project, env, "migrate", "production", "--yes").returncode == 0
    query("INSERT INTO users VALUES (1, 'secret@example.com')")
    backup_id = faber(run_faber, project, env, "backup", "production").json["result"]["id"]
    rollback = ("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json")

    with psycopg.connect(database_url) as reader:
        # An open transaction that read users: the restore's DROP waits for it, with psql running.
        reader.execute("SELECT * FROM users")
        killed_while_waiting(project, rollback, env, query, "psql")
        reader.rollback()
    [left] = tmp.glob("faber-pgdump-dir-*")
    assert "secret@example.com" in (left / "restore.sql").read_text()
    settled(left)

    again = FaberProcess.start(project, *rollback, env=env)
    assert again.finish() == 0, again.stdout() + again.stderr()
    assert list(tmp.glob("faber-pgdump-dir-*")) == []
    assert query("SELECT id, email FROM users") == [(1, "secret@example.com")]
