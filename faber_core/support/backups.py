"""For backup providers: the crash-safe manifest store under ``.faber/backups/<env>/`` and the
SQL that empties a database before a logical restore.

:func:`create_backup` makes a whole backup (one file, or a directory of files), given the step
that dumps the database (:func:`run_dump` runs a dump program). The store makes a backup visible only when it is whole
(archive and manifest written as partial files, fsynced, renamed), keeps every file private
(0600 in a 0700 folder), and locks the archive a running deploy took or a restore reads, so that
:func:`prune` never deletes it.

A provider whose backups :func:`create_backup` makes answers ``faber_backup_list`` with
:func:`list_backups` and ``faber_backup_prune`` with :func:`prune_backups`: both first remove what
killed runs left (a partial archive, a temporary manifest, an archive without a manifest) unless
a running faber still holds its lock, as the next :func:`create_backup` does. Its restore reads
the archive under :func:`reading`, so that no prune deletes it meanwhile::

    @hookimpl
    def faber_backup_list(context):
        return backups.list_backups(context)


    @hookimpl
    def faber_backup_prune(context, keep_last, dry_run):
        return backups.prune_backups(context, keep_last, dry_run)
"""

from faber_core.backup.restore import restore_prelude
from faber_core.backup.store import (
    ARCHIVE,
    DIRECTORY_ARCHIVE,
    Reservation,
    Sealed,
    backup_dir,
    create_backup,
    creation_failed,
    hold_for_run,
    list_backups,
    private_backup_dir,
    prune,
    prune_backups,
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
    "Reservation",
    "Sealed",
    "backup_dir",
    "create_backup",
    "creation_failed",
    "hold_for_run",
    "list_backups",
    "private_backup_dir",
    "prune",
    "prune_backups",
    "read_backups",
    "reading",
    "remove_leftovers",
    "reserve",
    "restore_prelude",
    "run_dump",
    "seal_archive",
    "write_manifest",
]
