"""faber's hooks for Prisma: answers when the configured ``database.migration_tool`` is ``prisma``."""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import ApplyOutcome, LocalMigration, MigrationPreview, MigrationState, ToolInfo

from faber_prisma import TOOL, applier, cli, preview, status


@hookimpl
def faber_migration_tools() -> list[ToolInfo]:
    return [ToolInfo(name=TOOL, description="Prisma migration folders and _prisma_migrations (no Node needed)")]


@hookimpl
def faber_migration_status(tool: str, context: RunContext) -> MigrationState | None:
    if tool != TOOL:
        return None
    return status.read_state(context)


@hookimpl
def faber_migration_preview(
    tool: str, context: RunContext, pending: list[LocalMigration]
) -> list[MigrationPreview] | None:
    if tool != TOOL:
        return None
    return preview.preview(context, pending)


@hookimpl
def faber_migration_apply(tool: str, context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome | None:
    if tool != TOOL:
        return None
    return applier.apply_pending(context, pending)


@hookimpl
def faber_migration_dev(tool: str, context: RunContext) -> ApplyOutcome | None:
    if tool != TOOL:
        return None
    return cli.migrate_dev(context)


@hookimpl
def faber_migration_resolve(tool: str, context: RunContext, name: str, resolution: str) -> MigrationState | None:
    if tool != TOOL:
        return None
    applier.resolve(context, name, resolution)
    return status.read_state(context)
