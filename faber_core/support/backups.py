"""For backup providers: the crash-safe manifest store under ``.faber/backups/<env>/`` and the
SQL that empties a database before a logical restore.

:func:`create_backup` makes a whole backup (one file, or a directory of files), given the step
that dumps the database (:func:`run_dump` runs a dump program). The store makes a backup visible only when it is whole
(archive and manifest written as partial files, fsynced, renamed), keeps every file private
(0600 in a 0700 folder), and locks the archive a running deploy took or a restore reads, so that
:func:`prune` never deletes it.
"""

from faber_core.backup.restore import restore_prelude
from faber_core.backup.store import (
    ARCHIVE,
    DIRECTORY_ARCHIVE,
    Sealed,
    backup_dir,
    create_backup,
    creation_failed,
    hold_for_run,
    private_backup_dir,
    prune,
    read_backups,
    reading,
    remove_leftovers,
    reserve,
    run_dump,
    seal_archive,
    write_manifest,
)

__all__ = [
    "ARCHIVE",
    "DIRECTORY_ARCHIVE",
    "Sealed",
    "backup_dir",
    "create_backup",
    "creation_failed",
    "hold_for_run",
    "private_backup_dir",
    "prune",
    "read_backups",
    "reading",
    "remove_leftovers",
    "reserve",
    "restore_prelude",
    "run_dump",
    "seal_archive",
    "write_manifest",
]
