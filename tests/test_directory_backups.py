"""``format: directory`` on a real PostgreSQL: ``pg_dump --format=directory --jobs N`` into the
backup folder, each file's size and sha256 in the manifest and checked before a restore in either
restore mode; a dump killed while its workers write leaves nothing that looks like a backup."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from faber_core.backup.swap import previous_name, restoring_name
from faber_core.testing.faults import application_sessions, descendants
from faber_core.testing.fixtures import (
    CANARY_PASSWORD,
    database_state,
    database_url_for,
    discard_database,
    process_alive,
    start_faber,
    wait_for,
)

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
DIRECTORY = {"provider": "pg_dump", "format": "directory", "jobs": 2}
SHOP = """
CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL UNIQUE);
INSERT INTO accounts SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 3000) g;
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account int REFERENCES accounts, total numeric
);
INSERT INTO orders (account, total) SELECT 1 + g % 3000, g / 7.0 FROM generate_series(1, 5000) g;
CREATE INDEX ON orders (account);
CREATE VIEW big_spenders AS SELECT account, sum(total) FROM orders GROUP BY account HAVING sum(total) > 100;
"""


def execute(url: str, script: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script)


def admin_execute(admin_url: str, statement: sql.Composable) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)


def folder(project_dir: Path) -> Path:
    return project_dir / ".faber/backups/production"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def directory_project(project):
    """``make(**backup_settings) -> project_dir``: the production environment backing up in the directory format."""

    def make(**backup) -> Path:
        return project({}, backup={**DIRECTORY, **backup})

    return make


def backup(run_faber, project_dir: Path) -> dict:
    done = run_faber("backup", "production", "--json", cwd=project_dir, env=SQLFILES)
    assert done.returncode == 0, done.output
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    return done.json["result"]


def rollback(run_faber, project_dir: Path, backup_id: str):
    return run_faber(
        *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
        cwd=project_dir,
        env=SQLFILES,
    )


def test_a_directory_backup_is_private_sealed_file_by_file_and_listed_with_its_size(
    directory_project, run_faber, database_url
):
    project_dir = directory_project()
    execute(database_url, SHOP)

    record = backup(run_faber, project_dir)
    listed = run_faber("backups", "production", "--json", cwd=project_dir, env=SQLFILES)
    shown = run_faber("backups", "production", cwd=project_dir, env=SQLFILES)

    archive = project_dir / record["location"]
    assert archive == folder(project_dir) / f"{record['id']}.dir" and mode(archive) == 0o700
    files = {path.name: path for path in archive.iterdir()}
    assert "toc.dat" in files and len(files) >= 3  # the table of contents and a file per table's rows
    assert all(mode(path) == 0o600 for path in files.values())
    assert record["provider_data"]["files"] == {
        name: {"size": path.stat().st_size, "sha256": sha256(path)} for name, path in files.items()
    }
    assert record["size_bytes"] == sum(path.stat().st_size for path in files.values())
    assert sorted(p.name for p in folder(project_dir).iterdir()) == [f"{record['id']}.dir", f"{record['id']}.json"]
    assert listed.returncode == 0 and listed.json["result"]["backups"] == [record], listed.output
    assert shown.returncode == 0 and record["id"] in shown.stdout and "KiB" in shown.stdout, shown.output


@pytest.fixture
def hostile_target(postgres_admin_url, monkeypatch):
    """``make() -> (name, url)``: a database whose name holds quotes, ``=`` and spaces, the project's
    URL pointing at it with the canary password; dropped after, with whatever a swap of it left."""
    made: list[str] = []

    def make() -> tuple[str, str]:
        name = f"faber dir 'quoted' \"double\" a=b {uuid.uuid4().hex[:8]}"
        admin_execute(postgres_admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        url = database_url_for(postgres_admin_url, quote(name, safe=""), password=CANARY_PASSWORD)
        monkeypatch.setenv("TEST_DATABASE_URL", url)
        return name, url

    yield make
    for name in made:
        for each in (name, restoring_name(name), previous_name(name)):
            discard_database(postgres_admin_url, each)


@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
@pytest.mark.parametrize("named", ["plainly", "hostile"])
def test_a_directory_backup_restores_exactly_in_either_restore_mode(
    directory_project, run_faber, database_url, hostile_target, restore_mode, named
):
    url = hostile_target()[1] if named == "hostile" else database_url
    project_dir = directory_project(restore_mode=restore_mode)
    execute(url, SHOP)
    at_backup = database_state(url)
    record = backup(run_faber, project_dir)
    execute(url, "DELETE FROM orders WHERE id > 10; DROP VIEW big_spenders; CREATE TABLE since_backup (id int)")

    done = rollback(run_faber, project_dir, record["id"])

    assert done.returncode == 0, done.output
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    assert database_state(url) == at_backup
    expected = "with pg_restore -j 2 beside the database" if restore_mode == "swap" else "in one transaction"
    assert expected in done.json["result"]["details"], done.output


def truncate(archive: Path, listed: dict) -> str:
    data = max(listed, key=lambda name: listed[name]["size"])
    with open(archive / data, "r+b") as handle:
        handle.truncate(listed[data]["size"] // 2)
    return f"has its file {data} at {listed[data]['size'] // 2} bytes where its manifest says {listed[data]['size']}"


def flip_a_byte(archive: Path, listed: dict) -> str:
    data = max(listed, key=lambda name: listed[name]["size"])
    with open(archive / data, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    return f"has its file {data} not matching its manifest checksum"


def remove_the_table_of_contents(archive: Path, listed: dict) -> str:
    (archive / "toc.dat").unlink()
    return "lacks its file toc.dat"


def link_a_file_elsewhere(archive: Path, listed: dict) -> str:
    (archive / "toc.dat").rename(archive.parent / "elsewhere.dat")
    (archive / "toc.dat").symlink_to(archive.parent / "elsewhere.dat")
    return "has its file toc.dat unreadable: Too many levels of symbolic links"


def add_a_file(archive: Path, listed: dict) -> str:
    (archive / "9999.dat.gz").write_bytes(b"not pg_dump's")
    return "holds a file its manifest does not list: 9999.dat.gz"


def edit_the_manifest_s_list(archive: Path, listed: dict) -> str:
    manifest = archive.with_suffix(".json")
    document = json.loads(manifest.read_text())
    del document["provider_data"]["files"]["toc.dat"]
    manifest.write_text(json.dumps(document))
    return "does not match its manifest's list of files"


def put_a_fifo_in_a_file_s_place_and_list_it(archive: Path, listed: dict) -> str:
    """A manifest that agrees with its archive, but one of whose files is a FIFO: read empty by
    the check, it would make pg_restore wait forever for a writer."""
    data = max(listed, key=lambda name: listed[name]["size"])
    (archive / data).unlink()
    os.mkfifo(archive / data)
    manifest = archive.with_suffix(".json")
    document = json.loads(manifest.read_text())
    document["provider_data"]["files"][data] = {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    lines = "".join(
        f"{entry['sha256']}  {entry['size']}  {name}\n"
        for name, entry in sorted(document["provider_data"]["files"].items())
    )
    document["sha256"] = hashlib.sha256(lines.encode()).hexdigest()
    manifest.write_text(json.dumps(document))
    return f"has its file {data} that is not a regular file"


@pytest.mark.parametrize(
    "damage",
    [
        truncate,
        flip_a_byte,
        remove_the_table_of_contents,
        link_a_file_elsewhere,
        add_a_file,
        edit_the_manifest_s_list,
        put_a_fifo_in_a_file_s_place_and_list_it,
    ],
)
@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_damaged_directory_archive_is_refused_before_anything_changes(
    directory_project, run_faber, database_url, postgres_admin_url, restore_mode, damage
):
    project_dir = directory_project(restore_mode=restore_mode)
    execute(database_url, SHOP)
    record = backup(run_faber, project_dir)
    execute(database_url, "DELETE FROM orders WHERE id > 10; CREATE TABLE since_backup (id int)")
    before = database_state(database_url)
    problem = damage(project_dir / record["location"], record["provider_data"]["files"])

    refused = rollback(run_faber, project_dir, record["id"])

    assert (refused.returncode, refused.json["code"]) == (8, "RESTORE_FAILED"), refused.output
    assert refused.json["error"].startswith(f"Backup archive {record['location']} {problem}"), refused.output
    assert refused.json["error"].endswith("; the database is unchanged")
    assert database_state(database_url) == before
    target = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(postgres_admin_url) as conn:
        swap_databases = conn.execute(
            "SELECT datname FROM pg_database WHERE datname IN (%s, %s)", [restoring_name(target), previous_name(target)]
        ).fetchall()
    assert swap_databases == []


def test_retention_and_prune_delete_directory_backups_whole(directory_project, run_faber, database_url):
    project_dir = directory_project(keep_last=2)
    execute(database_url, SHOP)
    ids = [backup(run_faber, project_dir)["id"] for _ in range(3)]
    after_retention = sorted(p.name for p in folder(project_dir).iterdir())
    newest = folder(project_dir) / f"{ids[2]}.dir"
    oldest_kept = folder(project_dir) / f"{ids[1]}.dir"
    size = sum(path.stat().st_size for path in oldest_kept.iterdir())

    pruned = run_faber("backups", "prune", "production", "--keep", "1", "--json", cwd=project_dir, env=SQLFILES)

    assert after_retention == sorted(f"{i}{suffix}" for i in ids[1:] for suffix in (".dir", ".json"))
    assert pruned.returncode == 0, pruned.output
    assert pruned.json["result"]["pruned"] == [ids[1]] and pruned.json["result"]["freed_bytes"] == size
    assert sorted(p.name for p in folder(project_dir).iterdir()) == [f"{ids[2]}.dir", f"{ids[2]}.json"]
    assert newest.is_dir()


# Killing faber while pg_dump's workers write ------------------------------------------------


def a_worker_writing(partial: list[Path]) -> bool:
    """Whether pg_dump's workers are writing a table's rows into the partial archive."""
    try:
        return any(path.name != "toc.dat" and path.stat().st_size > 0 for path in partial[0].iterdir())
    except (IndexError, FileNotFoundError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_a_directory_dump_killed_while_its_workers_write_leaves_no_backup(
    directory_project, database_url, run_faber, signum
):
    project_dir = directory_project()
    # Rows enough that pg_dump's two workers write their files for a while.
    execute(
        database_url,
        "CREATE TABLE left_rows AS SELECT g AS id, md5(g::text) || md5(random()::text) AS payload"
        " FROM generate_series(1, 600000) g;"
        "CREATE TABLE right_rows AS SELECT * FROM left_rows;",
    )
    faber = start_faber("backup", "production", "--json", cwd=project_dir, env=SQLFILES)
    try:
        partial = wait_for(lambda: list(folder(project_dir).glob("*.dir.partial")), "pg_dump to start")
        wait_for(lambda: a_worker_writing(partial), "pg_dump's workers to write", timeout=120)
        dumpers = [child.pid for child in descendants(faber.pid)]
        faber.send_signal(signum)
        faber.wait(timeout=60)
    finally:
        if faber.poll() is None:
            faber.kill()
        stdout, stderr = faber.communicate()
    assert len(dumpers) >= 3, "pg_dump and its two workers"
    if signum == signal.SIGTERM:  # faber stopped pg_dump and waited for its workers before it exited
        assert not [pid for pid in dumpers if process_alive(pid)]
    wait_for(lambda: not any(process_alive(pid) for pid in dumpers), "pg_dump and its workers to die", timeout=10)
    wait_for(lambda: not application_sessions(database_url, "pg_dump"), "pg_dump's sessions to end", timeout=10)
    assert CANARY_PASSWORD not in stdout.decode() + stderr.decode()
    # Nothing the killed run left looks like a backup: no manifest, and the archive still partial.
    assert not list(folder(project_dir).glob("*.json")) and not list(folder(project_dir).glob("*.dir"))

    status = run_faber("status", "production", "--json", cwd=project_dir, env=SQLFILES)
    listed = run_faber("backups", "production", "--json", cwd=project_dir, env=SQLFILES)
    again = backup(run_faber, project_dir)

    assert status.returncode == 0, status.output
    assert listed.returncode == 0 and listed.json["result"]["backups"] == [], listed.output
    assert sorted(p.name for p in folder(project_dir).iterdir()) == [f"{again['id']}.dir", f"{again['id']}.json"]
    if signum == signal.SIGTERM:  # faber saw the signal: it stopped pg_dump and removed the partial archive itself
        assert json.loads(stdout)["code"] == "INTERRUPTED", stdout


def test_a_partial_directory_removed_before_the_dump_locked_it_is_backup_failed_not_an_empty_backup(
    directory_project, context_for, plugins, monkeypatch
):
    """A listing's or another backup's cleanup can remove the new backup's ``.dir.partial``
    between its creation and its lock (it looks like a dead run's, empty and unlocked); pg_dump
    then writes a directory of that name again. Sealing the removed one listed no file: the deploy
    went on with a backup that no restore accepts. It must fail instead, leaving nothing."""
    from faber_core.backup import store
    from faber_core.errors import BackupFailed
    from faber_core.models import MigrationState
    from faber_core.workflow import take_backup

    for name, value in SQLFILES.items():
        monkeypatch.setenv(name, value)
    project_dir = directory_project()
    reserve = store.reserve

    def reserve_then_cleaned(*args, **kwargs):
        reservation = reserve(*args, **kwargs)
        reservation.partial.rmdir()  # what the other run's cleanup does just before the lock
        return reservation

    monkeypatch.setattr(store, "reserve", reserve_then_cleaned)

    nothing_applied = MigrationState(tool="sqlfiles", local=[], records=[])
    with pytest.raises(BackupFailed, match="removed while"):
        take_backup(context_for(project_dir, "create-backup"), plugins, "test", nothing_applied)

    assert not any(folder(project_dir).iterdir())
