"""The backup folder: private files, atomic manifests, leftovers, retention; a full or read-only
disk on both file providers (pg_dump and mysqldump), which share it."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from faber_core import events
from faber_core.backup import store
from faber_core.errors import BackupFailed, RestoreFailed
from faber_core.models import BackupRecord, MigrationState
from faber_core.testing.faults import FaberProcess, application_sessions, descendants
from faber_core.testing.fixtures import CANARY_PASSWORD, mysql_connect, process_alive, start_faber, wait_for
from faber_core.workflow import take_backup

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
NO_MIGRATIONS = MigrationState(tool="sqlfiles", local=[], records=[])


def backing_up(project_dir: Path, context_for, plugins) -> Callable[..., BackupRecord]:
    """``backup(context=None)``: a backup of the project's production database, as a deploy takes it."""

    def backup(context=None):
        return take_backup(context or context_for(project_dir, "create-backup"), plugins, "test", NO_MIGRATIONS)

    return backup


@pytest.fixture
def production(project, context_for, plugins, monkeypatch):
    """``(project_dir, backup)``; ``backup(context=None)`` takes a backup of the production database."""
    for name, value in SQLFILES.items():
        monkeypatch.setenv(name, value)
    project_dir = project({})
    return project_dir, backing_up(project_dir, context_for, plugins)


@dataclass
class Production:
    project_dir: Path
    backup: Callable[..., BackupRecord]
    fill: Callable[[int], None]
    """``fill(rows)``: that many rows of 64 random characters more in the database's table ``filler``."""


@pytest.fixture(params=["postgresql", "postgresql-directory", "mysql"])
def production_on_each_engine(request, faber_project, context_for, plugins, monkeypatch) -> Production:
    """The production environment on PostgreSQL (pg_dump, each archive format), then on
    MySQL/MariaDB (mysqldump)."""
    for name, value in SQLFILES.items():
        monkeypatch.setenv(name, value)
    env = {"database_url_env": "TEST_DATABASE_URL", "lock_wait_seconds": 1}
    if request.param.startswith("postgresql"):
        url = request.getfixturevalue("database_url")
        fill = fill_postgres
        if request.param == "postgresql-directory":
            env["backup"] = {"provider": "pg_dump", "format": "directory", "jobs": 2}
    else:
        url = request.getfixturevalue("mysql_database_url")
        fill = fill_mysql
    monkeypatch.setenv("TEST_DATABASE_URL", url)
    project_dir = faber_project({"database": {"migration_tool": "sqlfiles", "environments": {"production": env}}})
    return Production(project_dir, backing_up(project_dir, context_for, plugins), lambda rows: fill(url, rows))


def folder(project_dir: Path) -> Path:
    return project_dir / ".faber/backups/production"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_archives_and_manifests_are_private(production):
    project_dir, backup = production

    record = backup()

    assert mode(project_dir / ".faber/backups") == 0o700 and mode(folder(project_dir)) == 0o700
    assert mode(folder(project_dir) / f"{record.id}.dump") == 0o600
    assert mode(folder(project_dir) / f"{record.id}.json") == 0o600
    assert sorted(p.name for p in folder(project_dir).iterdir()) == [f"{record.id}.dump", f"{record.id}.json"]


DAMAGED_MANIFESTS = [
    b"",
    b'{"id": "backup-x", "provider": "pg_d',
    b"\x00\xff not json",
    b'{"id": 1}',
    b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's JSON parser can follow
]


def test_unreadable_manifests_are_reported_and_never_skipped_for_an_older_backup(production, run_faber):
    project_dir, backup = production
    good = backup()
    damaged = [backup().id for _ in DAMAGED_MANIFESTS]
    for backup_id, damage in zip(damaged, DAMAGED_MANIFESTS, strict=True):
        (folder(project_dir) / f"{backup_id}.json").write_bytes(damage)

    listed = run_faber("backups", "production", "--json", cwd=project_dir)
    to_damaged = run_faber("rollback", "production", "--to", damaged[0], "--yes", "--json", cwd=project_dir)
    newest = run_faber("rollback", "production", "--yes", "--json", cwd=project_dir)

    assert listed.returncode == 0, listed.output
    by_id = {b["id"]: b for b in listed.json["result"]["backups"]}
    assert by_id[good.id]["status"] == "available"
    for backup_id in damaged:
        assert by_id[backup_id]["status"] == "unusable"
        assert f"manifest {backup_id}.json is unreadable" in by_id[backup_id]["problem"]
    assert f"{len(DAMAGED_MANIFESTS)} unusable" in listed.json["message"]
    assert to_damaged.returncode == 2 and "empty (0 bytes)" in to_damaged.json["error"], to_damaged.output
    # The newest backups are unusable: restoring the older good one would undo more than asked.
    assert (newest.returncode, newest.json["code"]) == (2, "CONFIG_INVALID"), newest.output
    assert (
        "is unusable" in newest.json["error"] and f"the newest usable one, {good.id}, is older" in newest.json["error"]
    )
    assert f"faber rollback production --to {good.id}" in " ".join(newest.json["recovery"]["suggestions"])
    chosen = run_faber("rollback", "production", "--to", good.id, "--yes", "--json", cwd=project_dir)
    assert chosen.returncode == 0 and chosen.json["result"]["backup_id"] == good.id, chosen.output


PLANTED = {
    "a FIFO as a manifest": ("backup-20990101-000000.json", "fifo"),
    "/dev/zero as a manifest": ("backup-20990101-000000.json", "/dev/zero"),
    "a FIFO as a partial archive": ("backup-20990101-000000.dump.partial", "fifo"),
    "a FIFO as an archive without its manifest": ("backup-20990101-000000.dump", "fifo"),
    "a FIFO as a partial directory archive": ("backup-20990101-000000.dir.partial", "fifo"),
}


@pytest.mark.parametrize(("name", "kind"), list(PLANTED.values()), ids=list(PLANTED))
def test_a_fifo_or_device_planted_in_the_backup_folder_stops_nothing(production, run_faber, name, kind):
    """Anyone able to write the folder can plant a FIFO or a link to a device under a backup's name:
    faber read a manifest to its end (a FIFO: waiting for a writer for ever; /dev/zero: until memory
    ran out) and opened an archive to lock it (a FIFO: for ever), so listing, pruning, backing up
    and rolling back hung. Now such a manifest is an unusable backup and such an archive a leftover."""
    project_dir, backup = production
    good = backup()
    planted = folder(project_dir) / name
    if kind == "fifo":
        os.mkfifo(planted)
    else:
        planted.symlink_to(kind)

    listed = run_faber("backups", "production", "--json", cwd=project_dir, timeout=60)
    pruned = run_faber("backups", "prune", "production", "--keep", "1", "--json", cwd=project_dir, timeout=60)
    backed_up = run_faber("backup", "production", "--json", cwd=project_dir, timeout=60)
    restored = run_faber("rollback", "production", "--to", good.id, "--yes", "--json", cwd=project_dir, timeout=60)

    for run in (listed, pruned, backed_up, restored):
        assert run.returncode == 0, run.output
    by_id = {b["id"]: b for b in listed.json["result"]["backups"]}
    if name.endswith(".json"):
        assert by_id["backup-20990101-000000"]["status"] == "unusable"
        assert "is not a regular file" in by_id["backup-20990101-000000"]["problem"], by_id
        assert planted.is_symlink() or planted.exists()  # a manifest, even a broken one, is never deleted
    else:
        assert not os.path.lexists(planted)  # removed as a dead run's leftover
    assert restored.json["result"]["backup_id"] == good.id


def test_a_manifest_pointing_outside_the_backup_folder_is_never_restored(production, run_faber, tmp_path):
    """A manifest is JSON anyone who can write the folder may edit: its location must not send
    the restore to another file (another environment's backup, or anything else)."""
    project_dir, backup = production
    record = backup()
    elsewhere = tmp_path / "elsewhere.dump"
    elsewhere.write_bytes((folder(project_dir) / f"{record.id}.dump").read_bytes())
    manifest = folder(project_dir) / f"{record.id}.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "location": str(elsewhere)}))

    listed = run_faber("backups", "production", "--json", cwd=project_dir)
    refused = run_faber("rollback", "production", "--to", record.id, "--yes", "--json", cwd=project_dir)

    [listed_record] = listed.json["result"]["backups"]
    assert listed_record["status"] == "unusable" and "is outside production/" in listed_record["problem"]
    assert (refused.returncode, refused.json["code"]) == (2, "CONFIG_INVALID"), refused.output


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("a NUL byte", "location holds a NUL character or a lone surrogate"),
        ("a symbolic link loop", "is outside production/"),
    ],
)
def test_a_manifest_naming_a_location_no_archive_can_have_is_unusable_not_an_internal_error(
    production, run_faber, location, problem
):
    """Resolving such a location raised (ValueError: embedded null byte; RuntimeError: symlink
    loop): faber backups, rollback and prune ended with INTERNAL_ERROR, exit 1."""
    project_dir, backup = production
    record = backup()
    if location == "a NUL byte":
        named = f".faber/backups/production/{record.id}\0.dump"
    else:
        (folder(project_dir) / "loop").symlink_to("loop")
        named = ".faber/backups/production/loop"
    manifest = folder(project_dir) / f"{record.id}.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "location": named}))

    listed = run_faber("backups", "production", "--json", cwd=project_dir)
    refused = run_faber("rollback", "production", "--to", record.id, "--yes", "--json", cwd=project_dir)
    pruned = run_faber("backups", "prune", "production", "--keep", "1", "--json", cwd=project_dir)

    [listed_record] = listed.json["result"]["backups"]
    assert listed_record["status"] == "unusable" and problem in listed_record["problem"], listed_record
    assert (refused.returncode, refused.json["code"]) == (2, "CONFIG_INVALID"), refused.output
    assert pruned.returncode == 0, pruned.output


@pytest.mark.parametrize("text", ["faber\u0000", "\udcff"], ids=["nul", "lone-surrogate"])
def test_a_manifest_holding_a_nul_or_a_lone_surrogate_is_unusable_and_the_database_unchanged(
    production, run_faber, database_url, text
):
    """Its restore passed the manifest's excluded schema to the database, which refused it
    (DataError; UnicodeEncodeError): INTERNAL_ERROR, exit 1, after the rollback had begun."""
    project_dir, backup = production
    record = backup()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE after_the_backup (id int)")
    manifest = folder(project_dir) / f"{record.id}.json"
    document = json.loads(manifest.read_text())
    document["provider_data"]["excluded_schema"] = text
    manifest.write_text(json.dumps(document))

    listed = run_faber("backups", "production", "--json", cwd=project_dir)
    refused = run_faber("rollback", "production", "--to", record.id, "--yes", "--json", cwd=project_dir)

    [listed_record] = listed.json["result"]["backups"]
    assert listed_record["status"] == "unusable", listed_record
    assert "provider_data.excluded_schema holds a NUL character or a lone surrogate" in listed_record["problem"]
    assert (refused.returncode, refused.json["code"]) == (2, "CONFIG_INVALID"), refused.output
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('after_the_backup')").fetchone() == ("after_the_backup",)


def test_a_manifest_whose_id_is_not_its_file_name_is_never_pruned_or_restored(production, run_faber, tmp_path):
    """The id names the files a prune deletes: a manifest naming another backup, or a path, would
    have the prune delete that backup's files, or files outside the folder."""
    project_dir, backup = production
    first, second = backup(), backup()
    victim = tmp_path / "victim"
    (tmp_path / "victim.dump").write_text("not a backup")
    manifest = folder(project_dir) / f"{first.id}.json"
    elsewhere = os.path.relpath(victim, folder(project_dir))
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "id": elsewhere}))
    (folder(project_dir) / f"{second.id}.json").write_text(
        json.dumps({**json.loads((folder(project_dir) / f"{second.id}.json").read_text()), "id": first.id})
    )

    newest = backup()

    pruned = run_faber("backups", "prune", "production", "--keep", "1", "--json", cwd=project_dir)
    refused = run_faber("rollback", "production", "--to", elsewhere, "--yes", "--json", cwd=project_dir)

    assert pruned.returncode == 0, pruned.output
    assert pruned.json["result"]["kept"] == [newest.id] and pruned.json["result"]["pruned"] == []
    assert sorted(pruned.json["result"]["unreadable"]) == sorted([first.id, second.id])
    assert (tmp_path / "victim.dump").read_text() == "not a backup"
    assert all((folder(project_dir) / f"{record.id}.dump").exists() for record in (first, second))
    assert (refused.returncode, refused.json["code"]) == (2, "CONFIG_INVALID"), refused.output


def test_a_backup_whose_manifest_has_no_checksum_is_never_restored(
    production, run_faber, context_for, plugins, database_url
):
    """Without its sha256 an archive cannot be told from a damaged or swapped one: it is not restored."""
    project_dir, backup = production
    record = backup()
    manifest = folder(project_dir) / f"{record.id}.json"
    unverifiable = json.loads(manifest.read_text())
    del unverifiable["sha256"]
    manifest.write_text(json.dumps(unverifiable))
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE since_backup (id int)")

    listed = run_faber("backups", "production", "--json", cwd=project_dir)
    refused = run_faber("rollback", "production", "--to", record.id, "--yes", "--json", cwd=project_dir)
    newest = run_faber("rollback", "production", "--yes", "--json", cwd=project_dir)
    with pytest.raises(RestoreFailed) as direct:
        plugins.backup_restore(context_for(project_dir, "rollback"), record.model_copy(update={"sha256": None}))

    [listed_record] = listed.json["result"]["backups"]
    assert listed_record["status"] == "unusable" and "has no sha256 checksum" in listed_record["problem"]
    assert (refused.returncode, refused.json["code"]) == (2, "CONFIG_INVALID"), refused.output
    assert "has no sha256 checksum" in refused.json["error"]
    assert (newest.returncode, newest.json["code"]) == (2, "CONFIG_INVALID"), newest.output
    assert "cannot be verified" in direct.value.message
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('since_backup') IS NOT NULL").fetchone()[0]


def test_leftovers_of_dead_runs_are_removed_and_live_ones_kept(production, context_for):
    project_dir, backup = production
    record = backup()
    directory = folder(project_dir)
    stale = ["backup-20000101-000000.dump.partial", "backup-20000101-000001.dump", f"{record.id}.json.partial"]
    for name in stale:
        (directory / name).write_bytes(b"left by a killed run")
    stale_directories = ["backup-20000101-000003.dir.partial", "backup-20000101-000004.dir"]
    for name in stale_directories:  # directory archives: a killed parallel dump, or killed before its manifest
        (directory / name).mkdir()
        (directory / name / "toc.dat").write_bytes(b"left by a killed run")
    live = directory / "backup-20000101-000002.dump.partial"
    live.write_bytes(b"being written")
    live_directory = directory / "backup-20000101-000005.dir.partial"
    live_directory.mkdir()
    (live_directory / "toc.dat").write_bytes(b"being written")
    with store.reading(live), store.reading(live_directory):  # other processes' locks: backups in progress
        removed = store.remove_leftovers(context_for(project_dir, "list-backups"), directory)

    assert sorted(removed) == sorted(stale + stale_directories)
    assert not any((directory / name).exists() for name in stale + stale_directories)
    assert live.exists() and (live_directory / "toc.dat").exists() and (directory / f"{record.id}.dump").exists()


def test_retention_keeps_the_newest_and_never_one_in_use(production, context_for, run_faber, plugins):
    project_dir, backup = production
    config = project_dir / ".fractary/plugins/faber-db/config.json"
    settings = json.loads(config.read_text())
    settings["database"]["environments"]["production"]["backup"] = {"keep_last": 2}
    config.write_text(json.dumps(settings))

    deploy = context_for(project_dir, "deploy-migrations")
    of_running_deploy = backup(deploy)  # this run goes on: its backup must survive any prune
    ids = [of_running_deploy.id] + [backup().id for _ in range(3)]
    remaining = sorted(p.name for p in folder(project_dir).glob("*.json"))
    dry = run_faber("backups", "prune", "production", "--keep", "1", "--dry-run", "--json", cwd=project_dir)
    pruned = run_faber("backups", "prune", "production", "--keep", "1", "--json", cwd=project_dir)
    del deploy
    gc.collect()  # the deploy is over: its lock goes with it
    after_deploy = run_faber("backups", "prune", "production", "--keep", "1", "--json", cwd=project_dir)

    # keep_last 2 after each backup: the deploy's own backup stayed though it is the oldest.
    assert remaining == sorted(f"{i}.json" for i in [ids[0], ids[2], ids[3]])
    assert dry.returncode == 0 and dry.json["result"]["dry_run"] is True
    assert dry.json["result"]["pruned"] == [ids[2]] and dry.json["result"]["in_use"] == [ids[0]]
    assert pruned.json["result"]["pruned"] == [ids[2]] and pruned.json["result"]["kept"] == [ids[3]]
    assert "Deleted 1 backup(s), kept the newest 1; 1 in use kept" == pruned.json["message"]
    assert after_deploy.json["result"]["pruned"] == [ids[0]]
    assert sorted(p.name for p in folder(project_dir).iterdir()) == [f"{ids[3]}.dump", f"{ids[3]}.json"]


def test_prune_leaves_unreadable_manifests_alone(production, run_faber):
    project_dir, backup = production
    old = backup()
    (folder(project_dir) / f"{old.id}.json").write_bytes(b"")
    backup()

    run = run_faber("backups", "prune", "production", "--keep", "1", "--json", cwd=project_dir)

    assert run.json["result"]["unreadable"] == [old.id] and run.json["result"]["pruned"] == []
    assert (folder(project_dir) / f"{old.id}.dump").exists()


# A full disk, for real: a small tmpfs mounted over the backup folder (needs root) ----------


@pytest.fixture
def small_disk(tmp_path):
    """``mount(path, size_bytes)``: a tmpfs of that size at ``path``, unmounted afterwards."""
    mounted: list[Path] = []

    def mount(path: Path, size: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
        if run.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {run.stderr.decode().strip()}")
        mounted.append(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_postgres(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (payload text)")
        conn.execute(
            "INSERT INTO filler SELECT md5(random()::text) || md5(random()::text) FROM generate_series(1, %s)", [rows]
        )


def fill_mysql(url: str, rows: int) -> None:
    with mysql_connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (payload text)")
        payloads = [os.urandom(32).hex() for _ in range(rows)]
        conn.execute("INSERT INTO filler VALUES " + ", ".join(["(%s)"] * rows), payloads)


def test_a_full_disk_during_the_dump_is_backup_failed_and_leaves_nothing(
    production_on_each_engine, run_faber, small_disk
):
    project_dir = production_on_each_engine.project_dir
    production_on_each_engine.fill(20_000)  # over 700 kB dumped: larger than the disk
    small_disk(project_dir / ".faber/backups", 64 * 1024)

    run = run_faber("backup", "production", "--json", cwd=project_dir)

    assert run.returncode == 4, run.output
    assert run.json["code"] == "BACKUP_FAILED" and "no space left on device" in run.json["error"]
    assert "No space left on device" in run.json["result"]["backup_error"]
    assert list(folder(project_dir).iterdir()) == []


def test_a_full_disk_when_writing_the_manifest_is_backup_failed_and_leaves_nothing(
    production_on_each_engine, run_faber, small_disk
):
    project_dir = production_on_each_engine.project_dir
    production_on_each_engine.fill(2_000)
    record = production_on_each_engine.backup()  # the same database dumps to the same size again
    sizes = [entry["size"] for entry in record.provider_data.get("files", {}).values()] or [record.size_bytes]
    for leftover in folder(project_dir).iterdir():
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    page = 4096
    small_disk(project_dir / ".faber/backups", sum(-(-size // page) * page for size in sizes))  # the archive alone

    run = run_faber("backup", "production", "--json", cwd=project_dir)

    assert run.returncode == 4, run.output
    assert run.json["code"] == "BACKUP_FAILED" and "no space left on device" in run.json["error"]
    assert list(folder(project_dir).iterdir()) == []


def test_a_deploy_whose_backup_cannot_be_written_applies_nothing_and_gives_the_specs_fallbacks(
    faber_project, database_url, run_faber, monkeypatch
):
    for name, value in SQLFILES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TEST_DATABASE_URL", database_url)
    environment = {"database_url_env": "TEST_DATABASE_URL", "lock_wait_seconds": 1}
    project_dir = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    folder(project_dir).parent.mkdir(parents=True, exist_ok=True)
    folder(project_dir).write_text("a file where the backup folder goes")

    run = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir)

    assert (run.returncode, run.json["code"]) == (4, "BACKUP_FAILED"), run.output
    assert run.json["error"].startswith("Failed to create pre-migration backup: cannot write under")
    assert run.json["recovery"]["suggestions"][-2:] == [
        "Or skip backup (NOT recommended): faber migrate production --skip-backup",
        "Or create manual backup first: faber backup production",
    ]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('users')").fetchone() == (None,)


@pytest.mark.parametrize("operation", ["deploy-migrations", "create-backup"])
def test_a_database_unreachable_for_the_backup_gets_advice_fit_for_either_command(
    production_on_each_engine, context_for, monkeypatch, operation
):
    """The provider's own advice: what to check and to run the same command again, never
    ``faber backup`` in a deploy (a deploy adds the spec's fallbacks after it)."""
    url = os.environ["TEST_DATABASE_URL"]
    monkeypatch.setenv("TEST_DATABASE_URL", url.replace(f":{urlsplit(url).port}/", ":1/"))

    with pytest.raises(BackupFailed) as raised:
        production_on_each_engine.backup(context_for(production_on_each_engine.project_dir, operation))

    assert raised.value.suggestions == ["Verify the database is reachable, then run the same command again"]


def test_a_read_only_backup_folder_still_lists_and_restores_and_refuses_writes_with_backup_failed(
    production_on_each_engine, run_faber, small_disk
):
    """Backups on a volume mounted read-only (an incident, a restored snapshot): a leftover that
    cannot be removed must not stop listing or restoring, and writing is BACKUP_FAILED, not a crash."""
    project_dir, backup = production_on_each_engine.project_dir, production_on_each_engine.backup
    small_disk(project_dir / ".faber/backups", 1024 * 1024)
    older, newer = backup(), backup()
    (folder(project_dir) / f"{newer.id}-killed.dump.partial").write_bytes(b"left by a killed run")
    remount = subprocess.run(["mount", "-o", "remount,ro", str(project_dir / ".faber/backups")], capture_output=True)
    assert remount.returncode == 0, remount.stderr

    listed = run_faber("backups", "production", "--json", cwd=project_dir)
    assert listed.returncode == 0, listed.output
    assert [b["id"] for b in listed.json["result"]["backups"]] == [newer.id, older.id]
    for args in (["backups", "prune", "production", "--keep", "1"], ["backup", "production"]):
        refused = run_faber(*args, "--json", cwd=project_dir)
        assert (refused.returncode, refused.json["code"]) == (4, "BACKUP_FAILED"), refused.output
        assert "Read-only file system" in refused.json["error"]
    restored = run_faber("rollback", "production", "--to", older.id, "--yes", "--json", cwd=project_dir)
    assert restored.returncode == 0, restored.output
    kept = [Path(b.location).name for b in (older, newer)] + [f"{b.id}.json" for b in (older, newer)]
    assert sorted(p.name for p in folder(project_dir).iterdir()) == sorted([*kept, f"{newer.id}-killed.dump.partial"])


# Killing faber during pg_dump ------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_killing_faber_during_pg_dump_leaves_no_orphan_and_no_partial_file(production, database_url, run_faber, signum):
    project_dir, _ = production
    with psycopg.connect(database_url) as blocker:
        # pg_dump waits for this table's lock: the backup is in progress for as long as needed.
        blocker.execute("CREATE TABLE busy (id int)")
        blocker.commit()
        blocker.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        faber = start_faber("backup", "production", "--json", cwd=project_dir, env=SQLFILES)
        try:
            wait_for(lambda: application_sessions(database_url, "pg_dump"), "pg_dump to start")
            dumpers = [child.pid for child in descendants(faber.pid)]
            partial = list(folder(project_dir).glob("*.dump.partial"))
            assert dumpers and partial, "pg_dump did not start"
            faber.send_signal(signum)
            faber.wait(timeout=60)
        finally:
            if faber.poll() is None:
                faber.kill()
            faber.communicate()
        # pg_dump dies with faber, and the server ends its session though it waits for a lock.
        wait_for(lambda: not any(process_alive(pid) for pid in dumpers), "pg_dump to die", timeout=10)
        wait_for(lambda: not application_sessions(database_url, "pg_dump"), "pg_dump's session to end", timeout=10)
        blocker.rollback()

    listed = run_faber("backups", "production", "--json", cwd=project_dir)

    assert listed.returncode == 0 and listed.json["result"]["backups"] == []
    assert list(folder(project_dir).iterdir()) == []


@pytest.mark.parametrize("command", ["backup", "migrate"])
def test_a_backup_interrupted_once_it_was_made_says_it_was_made(production, database_url, run_faber, command):
    """The signal lands as the backup's write counters are recorded, after its manifest: the backup
    is whole and listed. Before, the document was a bare INTERRUPTED that named no backup, as if
    none had been made. A deploy stopped there applied nothing, and its backup restores, saying
    the rows written since it are unknown (its write counters were never recorded)."""
    project_dir, _ = production
    assert run_faber("backup", "production", "--json", cwd=project_dir, env=SQLFILES).returncode == 0
    (project_dir / "migrations").mkdir(exist_ok=True)
    (project_dir / "migrations" / "001_orders.sql").write_text("CREATE TABLE orders (id int);")
    args = ("backup", "production", "--json") if command == "backup" else ("migrate", "production", "--yes", "--json")
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE faber.faber_backup_baselines IN ACCESS EXCLUSIVE MODE")
        run = FaberProcess.start(project_dir, *args, env=SQLFILES)
        try:
            run.wait_for("backup.started")
            run.wait_until(lambda: baseline_waits(database_url), what="the write counters' record held")
            run.kill(signal.SIGTERM)
            code = run.wait(60)
        finally:
            run.stop_everything()
        holder.rollback()
    document = json.loads(run.stdout())
    listed = run_faber("backups", "production", "--json", cwd=project_dir, env=SQLFILES)

    assert code == 130 and document["code"] == "INTERRUPTED", run.stdout()
    newest = listed.json["result"]["backups"][0]
    assert newest["status"] == "available" and document["result"]["backup_id"] == newest["id"], run.stdout()
    assert f"once backup {newest['id']} was made" in document["error"]
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('public.orders')").fetchone() == (None,)
    if command == "migrate":
        assert document["result"].get("applied_migrations", []) == [], run.stdout()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int)")  # what the restore must undo
        restored = run_faber(
            "rollback", "production", "--to", newest["id"], "--yes", "--json", cwd=project_dir, env=SQLFILES
        )
        assert restored.returncode == 0, restored.stdout
        assert restored.json["result"]["writes_since_backup"]["status"] == "unknown", restored.stdout
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT to_regclass('public.orders')").fetchone() == (None,)


def baseline_waits(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        query = (
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE '%faber_backup_baselines%'"
        )
        return conn.execute(query).fetchone() is not None


def test_concurrent_backups_in_the_same_second_get_different_ids(tmp_path):
    import datetime as dt

    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    first = store.reserve(tmp_path, now)
    second = store.reserve(tmp_path, now)

    assert (first.id, second.id) == ("backup-20300101-000000", "backup-20300101-000000-2")


def test_a_backup_and_a_deploy_never_interleave_so_the_manifest_lists_what_the_archive_holds(
    faber_project, run_faber, database_url, tmp_path
):
    """`faber backup` read the applied migrations, then pg_dump took its snapshot: a deploy that
    committed in between left an archive holding a migration its manifest did not list, and a
    rollback to it restored, then failed its verification (exit 8). The backup is stopped
    (SIGSTOP) right after its read, while a deploy runs."""
    env = {**SQLFILES, "TEST_DATABASE_URL": database_url}
    production = {"database_url_env": "TEST_DATABASE_URL", "lock_wait_seconds": 1}
    config = {"database": {"migration_tool": "sqlfiles", "environments": {"production": production}}}
    users = {"migrations/001_users.sql": "CREATE TABLE users (id int);"}
    backing_up = faber_project(config, users, root=tmp_path / "backing-up")
    deploying = faber_project(config, {**users, "migrations/002_posts.sql": "CREATE TABLE posts (id int);"})
    assert run_faber("migrate", "production", "--yes", cwd=backing_up, env=env).returncode == 0

    backup = FaberProcess.start(backing_up, "backup", "production", "--json", env=env)
    try:
        backup.wait_for(events.BACKUP_STARTED)
        os.kill(backup.pid, signal.SIGSTOP)
        deploy = run_faber("migrate", "production", "--yes", "--json", cwd=deploying, env=env)
        os.kill(backup.pid, signal.SIGCONT)
        assert backup.finish() == 0, backup.stderr()
    finally:
        backup.stop_everything()

    assert (deploy.returncode, deploy.json["code"]) == (7, "LOCKED"), deploy.output
    backup_id = json.loads(backup.stdout())["result"]["id"]
    rollback = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", cwd=backing_up, env=env)
    assert rollback.returncode == 0, rollback.output


# A file-size limit (``ulimit -f``, what some CI runners set): the dumping program is killed by
# SIGXFSZ mid-write, or faber's own write fails with EFBIG; needs no root, unlike the tmpfs above.


def test_a_file_size_limit_during_the_dump_is_backup_failed_and_says_so(production_on_each_engine):
    project_dir = production_on_each_engine.project_dir
    production_on_each_engine.fill(20_000)  # over 700 kB dumped
    limit = 256 * 1024

    def limited() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = subprocess.run(
        [sys.executable, "-m", "faber_core", "backup", "production", "--json"],
        cwd=project_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        preexec_fn=limited,
        timeout=300,
    )

    assert run.returncode == 4, run.stdout + run.stderr
    document = json.loads(run.stdout)
    assert document["code"] == "BACKUP_FAILED"
    # pg_dump -Fc and mysqldump are killed (faber names the signal); pg_dump -Fd's worker is, and
    # pg_dump says only that it died.
    said = ("killed by SIGXFSZ (File size limit exceeded)", "a worker process died unexpectedly")
    assert any(text in document["result"]["backup_error"] for text in said), document
    assert list(folder(project_dir).iterdir()) == []


@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_file_size_limit_when_the_restore_writes_its_list_is_restore_failed_and_changes_nothing(
    faber_project, database_url, run_faber, restore_mode
):
    """Before it changes anything a restore writes the list of the archive's entries it restores
    to a temporary file: a full temporary disk (here a file-size limit) there was an unexpected
    error (INTERNAL_ERROR, "please report this as a bug"), not what it is: RESTORE_FAILED, exit 8,
    the database unchanged, with what to free."""
    env = {**os.environ, **SQLFILES, "TEST_DATABASE_URL": database_url}
    environment = {"database_url_env": "TEST_DATABASE_URL", "lock_wait_seconds": 1}
    if restore_mode == "swap":
        environment["backup"] = {"restore_mode": "swap"}
    project_dir = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id int); INSERT INTO users VALUES (1), (2);"},
    )
    assert run_faber("migrate", "production", "--yes", cwd=project_dir, env=env).returncode == 0
    backup = run_faber("backup", "production", "--json", cwd=project_dir, env=env)
    assert backup.returncode == 0, backup.output
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE id = 2")

    def tiny_files() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))

    run = subprocess.run(
        [sys.executable, "-m", "faber_core", "rollback", "production", "--to", backup.json["result"]["id"]]
        + ["--yes", "--discard-app-writes", "--json"],
        cwd=project_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        preexec_fn=tiny_files,
        timeout=300,
    )

    assert run.returncode == 8, run.stdout + run.stderr
    document = json.loads(run.stdout)
    assert document["code"] == "RESTORE_FAILED" and "the database is unchanged" in document["error"], document
    assert "File too large" in document["error"], document
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT id FROM users").fetchall() == [(1,)]
