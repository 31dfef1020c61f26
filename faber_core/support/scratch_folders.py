"""Scratch folders for the files a run writes on its way (a restore's list of what to restore, a
rehearsal's dumps, the lint's copies of the migrations, a backup provider's SQL script), and the
sweep of those a killed run left.

Such a folder lives in the temporary directory and is removed as its step ends, but SIGKILL (the
out-of-memory killer, a CI runner's last word) leaves it behind, with what it held: the name of
every table, a schema, copied rows. So each folder holds a lock file that its run keeps locked
(``fcntl.flock``) while it uses the folder; the lock dies with the process. Each new scratch folder
first removes the scratch folders whose lock can be taken: those no running faber uses. It removes
only folders named ``faber-…`` that hold faber's lock file and are owned by this user, never
through a symlink, and not one made in the last :data:`SETTLING_SECONDS` (its run may be between
making it and locking it). A folder left by a faber older than this sweep has no lock file and is
left alone.

A plugin gets the same for its own files with its own prefix, ``faber-`` and its name::

    from faber_core.support.scratch_folders import scratch_folder

    with scratch_folder("faber-pgdump-dir-") as scratch:
        script = scratch / "restore.sql"  # removed after the block, or by the next run if this one is killed
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SCRATCH_PREFIX = "faber-"
"""What every scratch folder's name begins with, faber's own (``faber-restore-``, ``faber-lint-``…)
and a plugin's: the sweep looks at no other folder."""
_PREFIX = re.compile(re.escape(SCRATCH_PREFIX) + r"([a-z0-9]+-)+")
LOCK_FILE = ".faber-in-use"
SETTLING_SECONDS = 60.0


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A new folder (0700) in the temporary directory for the block, removed after it, and by a later
    run if this one is killed.

    ``prefix`` names whose folder it is: :data:`SCRATCH_PREFIX`, then lower-case words each ended by
    ``-`` (``faber-restore-``, a plugin's ``faber-pgdump-dir-``). Anything else (a path,
    another program's name) is :class:`ValueError`: the sweep would never find that folder.
    """
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"A scratch folder's prefix is {SCRATCH_PREFIX} then lower-case words each ended by -, not {prefix!r}"
        )
    sweep_stale()
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        lock = os.open(os.path.join(name, LOCK_FILE), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield Path(name)
        finally:
            os.close(lock)


def sweep_stale() -> None:
    """Remove the scratch folders killed runs left (see the module's docstring); never fails."""
    with contextlib.suppress(OSError):
        with os.scandir(tempfile.gettempdir()) as entries:
            for entry in entries:
                if entry.name.startswith(SCRATCH_PREFIX) and _left_by_a_killed_run(entry):
                    shutil.rmtree(entry.path, ignore_errors=True)


def _left_by_a_killed_run(entry: os.DirEntry) -> bool:
    try:
        status = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.geteuid():
        return False  # a symlink (to what it must not delete), a file, another user's
    if time.time() - status.st_mtime < SETTLING_SECONDS:
        return False
    try:
        lock = os.open(os.path.join(entry.path, LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # no lock file: not known to be faber's, or not to be unused
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a running faber holds it
    finally:
        os.close(lock)
    return True
