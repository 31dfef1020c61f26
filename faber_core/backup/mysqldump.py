"""Hook implementations of the built-in backup provider ``mysqldump`` for MySQL/MariaDB, and the
names of faber's own tables in a MySQL database; the work is in :mod:`faber_core.backup.mysql_dumps`.

Every command registers this plugin, PostgreSQL's too: the dump, the restore and the backup store
are imported by the hooks that use them (start-up, docs/performance.md).
"""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import BackupProviderInfo, BackupPruneOutcome, BackupRecord, RestoreOutcome

PROVIDER = "mysqldump"
UNFINISHED_MIGRATIONS = "faber_unfinished_migrations"
"""Migrations a deploy was about to run outside a transaction (:mod:`faber_core.audit.unfinished`)."""
JOURNAL = "faber_restore_journal"
"""The restore's swap in progress, in the target database (faber's: backups leave it out, the swap
does not move it) only while the swap is under way: what a kill between its statements would leave
half done, and how to finish."""
FABER_TABLES = ("faber_deployments", JOURNAL, UNFINISHED_MIGRATIONS)
"""faber's own tables in the target database (its history, :mod:`faber_core.engines.mysql_history`,
and the journal): a backup leaves them out and a restore keeps them. Only these: an application's
table whose name starts with ``faber_`` too is the application's, backed up and restored."""


@hookimpl
def faber_backup_providers() -> list[BackupProviderInfo]:
    return [
        BackupProviderInfo(
            name=PROVIDER,
            description="mysqldump/mariadb-dump SQL dumps in .faber/backups/<env>/, restored by an atomic table swap",
            engines=["mysql"],
        )
    ]


@hookimpl
def faber_backup_create(context: RunContext, reason: str, migrations: list[tuple[str, str | None]]) -> BackupRecord:
    from faber_core.backup import mysql_dumps

    return mysql_dumps.create(context, reason, migrations)


@hookimpl
def faber_backup_list(context: RunContext) -> list[BackupRecord]:
    from faber_core.backup import store

    return store.list_backups(context)


@hookimpl
def faber_backup_prune(context: RunContext, keep_last: int | None, dry_run: bool) -> BackupPruneOutcome:
    from faber_core.backup import store

    return store.prune_backups(context, keep_last, dry_run)


@hookimpl
def faber_backup_restore(context: RunContext, backup: BackupRecord) -> RestoreOutcome:
    from faber_core.backup import mysql_dumps

    return mysql_dumps.restore(context, backup)
