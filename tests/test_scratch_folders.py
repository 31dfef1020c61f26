"""The scratch folders a SIGKILLed run leaves in the temporary directory (a restore's list of
every table, a rehearsal's dumps) are removed by a later run, and nothing else is
(faber_core/support/scratch_folders.py)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from faber_core.support import scratch_folders
from faber_core.support.scratch_folders import SETTLING_SECONDS, scratch_folder, sweep_stale
from faber_core.testing import held_event
from faber_core.testing.faults import FaberProcess, event_matcher

ENVIRONMENT = "production"
URL_ENV = "SCRATCH_DATABASE_URL"


def settled(folder: Path) -> None:
    """Date ``folder`` back past the sweep's settling time, as if its run had been killed a while ago."""
    past = time.time() - SETTLING_SECONDS - 5
    os.utime(folder, (past, past), follow_symlinks=False)


def restore_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("faber-restore-*"))


@pytest.fixture
def temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own temporary directory, so that it sees no other run's folders."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_the_folder_of_a_restore_killed_by_sigkill_is_removed_by_the_next_restore(
    faber_project, database_url, tmp_path
):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", URL_ENV: database_url, "TMPDIR": str(tmp)}
    settings = {"database_url_env": URL_ENV, "lint": "warn", "backup": {"provider": "pg_dump"}}
    config = {"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: settings}}}
    project = faber_project(config, {"migrations/000_base.sql": "CREATE TABLE accounts (id int PRIMARY KEY);\n"})
    backup = FaberProcess.start(project, "backup", ENVIRONMENT, "--json", env=env)
    assert backup.finish() == 0, backup.stdout() + backup.stderr()
    backup_id = json.loads(backup.stdout())["result"]["id"]
    rollback = ("rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json")

    # Held once the restore committed, inside its scratch folder's block (held_event).
    held = {held_event.EVENT_ENV: "backup.restore_step", held_event.SECONDS_ENV: "30"}
    killed = FaberProcess.start(
        project,
        *rollback,
        env={**env, **held, "FABER_PLUGINS": env["FABER_PLUGINS"] + ",faber_core.testing.held_event"},
    )
    try:
        killed.wait_for(event_matcher("backup.restore_step"))
        killed.kill(signal.SIGKILL)
        killed.wait(30)
    finally:
        killed.stop_everything()
    [left] = restore_folders(tmp)
    assert (left / "restore.list").exists()  # the archive's list of what to restore, naming every table
    settled(left)

    again = FaberProcess.start(project, *rollback, env=env)
    assert again.finish() == 0, again.stdout() + again.stderr()
    assert restore_folders(tmp) == []


def test_a_folder_a_running_faber_uses_is_kept(temporary_directory: Path):
    with scratch_folder("faber-restore-") as in_use:
        settled(in_use)
        sweep_stale()
        assert in_use.is_dir()
    assert not in_use.exists()


def test_only_faber_s_unlocked_folders_of_this_user_are_removed(temporary_directory: Path, tmp_path: Path):
    left = temporary_directory / "faber-rehearsal-left"
    left.mkdir()
    (left / scratch_folders.LOCK_FILE).touch()
    (left / "schema.dump").write_text("copied rows")
    # An attacker's symlink named like faber's folder: the sweep must not delete what it points at.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / scratch_folders.LOCK_FILE).touch()
    (precious / "data").write_text("keep me")
    planted = temporary_directory / "faber-restore-planted"
    planted.symlink_to(precious)
    # Named like faber's, without its lock file: not known to be unused.
    unlocked = temporary_directory / "faber-lint-without-lock"
    unlocked.mkdir()
    other = temporary_directory / "pgsql-not-faber"
    other.mkdir()
    (other / scratch_folders.LOCK_FILE).touch()
    fresh = temporary_directory / "faber-swap-just-made"
    fresh.mkdir()
    (fresh / scratch_folders.LOCK_FILE).touch()
    for folder in (left, planted, unlocked, other):
        settled(folder)

    sweep_stale()

    assert not left.exists()
    assert planted.is_symlink() and (precious / "data").read_text() == "keep me"
    assert unlocked.is_dir() and other.is_dir() and fresh.is_dir()


def test_another_user_s_folder_is_kept(temporary_directory: Path):
    if os.geteuid() != 0:
        pytest.skip("making a folder another user owns needs root")
    theirs = temporary_directory / "faber-restore-theirs"
    theirs.mkdir()
    (theirs / scratch_folders.LOCK_FILE).touch()
    os.chown(theirs, 65534, 65534)
    settled(theirs)

    sweep_stale()

    assert theirs.is_dir()


def test_a_plugin_s_folder_is_swept_like_faber_s(temporary_directory: Path):
    with scratch_folder("faber-pgdump-dir-") as in_use:
        settled(in_use)
        sweep_stale()
        assert in_use.is_dir()
    left = temporary_directory / "faber-pgdump-dir-left"
    left.mkdir()
    (left / scratch_folders.LOCK_FILE).touch()
    (left / "restore.sql").write_text("COPY accounts FROM stdin;")
    settled(left)

    with scratch_folder("faber-lint-"):
        assert not left.exists()


@pytest.mark.parametrize("prefix", ["pgdump-dir-", "faber-", "faber-pgdump", "faber-../tmp-", "faber-a/b-", "Faber-x-"])
def test_a_prefix_the_sweep_would_not_find_is_refused(temporary_directory: Path, prefix: str):
    with pytest.raises(ValueError, match="prefix"):
        with scratch_folder(prefix):
            pass
    assert list(temporary_directory.iterdir()) == []
