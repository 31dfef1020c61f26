"""faber's hooks for the ``pgdump-dir`` backup provider; faber calls them only for that provider.

faber imports every installed plugin at each start: each hook imports what it needs when it
runs, so that a run with another provider (or none) does not.
"""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import BackupProviderInfo, BackupPruneOutcome, BackupRecord, RestoreOutcome
from faber_pgdump_dir import PROVIDER


@hookimpl
def faber_backup_providers() -> list[BackupProviderInfo]:
    return [BackupProviderInfo(name=PROVIDER, description="pg_dump directory archives (-Fd -j 2) in .faber/backups")]


@hookimpl
def faber_backup_create(context: RunContext, reason: str, migrations: list[tuple[str, str | None]]) -> BackupRecord:
    from faber_pgdump_dir import archives

    return archives.create(context, reason, migrations)


@hookimpl
def faber_backup_list(context: RunContext) -> list[BackupRecord]:
    from faber_core.support import backups

    return backups.list_backups(context)


@hookimpl
def faber_backup_prune(context: RunContext, keep_last: int | None, dry_run: bool) -> BackupPruneOutcome:
    from faber_core.support import backups

    return backups.prune_backups(context, keep_last, dry_run)


@hookimpl
def faber_backup_restore(context: RunContext, backup: BackupRecord) -> RestoreOutcome:
    from faber_pgdump_dir import archives

    return archives.restore(context, backup)
