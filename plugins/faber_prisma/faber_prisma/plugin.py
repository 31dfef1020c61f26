"""faber's hooks for Prisma, called when the configured ``database.migration_tool`` is ``prisma``."""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import (
    ApplyOutcome,
    LocalMigration,
    MigrationPreview,
    MigrationRefusal,
    MigrationState,
    Resolution,
    ToolInfo,
)

from faber_prisma import TOOL, status
from faber_prisma.migrations import PrismaOptions

# The applier, the Prisma CLI's runner and the preview are imported by the hooks that use them: a
# `faber status` needs none of them (start-up, docs/performance.md).


@hookimpl
def faber_migration_tools() -> list[ToolInfo]:
    return [
        ToolInfo(
            name=TOOL,
            description="Prisma migration folders and _prisma_migrations (no Node needed)",
            options=PrismaOptions,
        )
    ]


@hookimpl
def faber_migration_status(context: RunContext) -> MigrationState:
    return status.read_state(context)


@hookimpl
def faber_migration_validate(context: RunContext, pending: list[LocalMigration]) -> list[MigrationRefusal]:
    # Refused here, before faber's lock and the backup, not in apply: a folder without
    # migration.sql, and a database created outside Prisma that needs baselining first (P3005).
    from faber_prisma import applier

    applier.require_scripts_of(context, pending)
    applier.refuse_unbaselined_database(context, pending)
    return []


@hookimpl
def faber_migration_preview(context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
    from faber_prisma import preview

    return preview.preview(context, pending)


@hookimpl
def faber_migration_apply(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    from faber_prisma import applier

    return applier.apply_pending(context, pending)


@hookimpl
def faber_migration_dev(context: RunContext) -> ApplyOutcome | None:
    from faber_prisma import cli

    return cli.migrate_dev(context)


@hookimpl
def faber_migration_resolve(context: RunContext, name: str, resolution: Resolution) -> MigrationState:
    from faber_prisma import applier

    applier.resolve(context, name, resolution)
    return status.read_state(context)
