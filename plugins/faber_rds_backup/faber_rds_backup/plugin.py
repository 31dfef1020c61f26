"""Hook implementations of the ``rds-snapshot`` backup provider; the work is in the modules beside.

faber calls these hooks only for ``rds-snapshot``; boto3 is imported only when one runs, so
``faber --version`` and runs with other providers stay fast.
"""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import BackupLeftover, BackupProviderInfo, BackupRecord, RestoreOutcome

from faber_rds_backup.settings import PROVIDER, RdsBackupSettings


@hookimpl
def faber_backup_providers() -> list[BackupProviderInfo]:
    return [
        BackupProviderInfo(
            name=PROVIDER,
            description="RDS / Aurora snapshots; rollback restores to a new instance and swaps it in",
            options=RdsBackupSettings,
            whole_instance=True,
        )
    ]


@hookimpl
def faber_backup_create(context: RunContext, reason: str, migrations: list[tuple[str, str | None]]) -> BackupRecord:
    from faber_rds_backup import snapshots

    return snapshots.create(context, reason, migrations)


@hookimpl
def faber_backup_list(context: RunContext) -> list[BackupRecord]:
    from faber_rds_backup import snapshots

    return snapshots.list_backups(context)


@hookimpl
def faber_backup_restore(context: RunContext, backup: BackupRecord) -> RestoreOutcome:
    from faber_rds_backup import restore

    return restore.restore(context, backup)


@hookimpl
def faber_backup_leftovers(context: RunContext) -> list[BackupLeftover]:
    from faber_rds_backup import leftovers

    return leftovers.survey(context)
