"""Hook implementations of the ``rds-snapshot`` backup provider; the work is in the modules beside.

boto3 is imported only when a hook runs for ``rds-snapshot``, so ``faber --version`` and runs
with other providers stay fast.
"""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import BackupProviderInfo, BackupRecord, RestoreOutcome

from faber_rds_backup.settings import PROVIDER


@hookimpl
def faber_backup_providers() -> list[BackupProviderInfo]:
    return [
        BackupProviderInfo(
            name=PROVIDER, description="RDS / Aurora snapshots; rollback restores to a new instance and swaps it in"
        )
    ]


@hookimpl
def faber_backup_create(
    provider: str, context: RunContext, reason: str, migrations: list[tuple[str, str | None]]
) -> BackupRecord | None:
    if provider != PROVIDER:
        return None
    from faber_rds_backup import snapshots

    return snapshots.create(context, reason, migrations)


@hookimpl
def faber_backup_list(provider: str, context: RunContext) -> list[BackupRecord] | None:
    if provider != PROVIDER:
        return None
    from faber_rds_backup import snapshots

    return snapshots.list_backups(context)


@hookimpl
def faber_backup_restore(provider: str, context: RunContext, backup: BackupRecord) -> RestoreOutcome | None:
    if provider != PROVIDER:
        return None
    from faber_rds_backup import restore

    return restore.restore(context, backup)
