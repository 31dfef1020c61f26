"""faber's hooks for TypeORM: answers when the configured ``database.migration_tool`` is ``typeorm``."""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import ApplyOutcome, LocalMigration, MigrationPreview, MigrationState, ToolInfo

from faber_typeorm import TOOL, runner


@hookimpl
def faber_migration_tools() -> list[ToolInfo]:
    return [ToolInfo(name=TOOL, description="TypeORM migrations through the project's own MigrationExecutor")]


@hookimpl
def faber_migration_status(tool: str, context: RunContext) -> MigrationState | None:
    if tool != TOOL:
        return None
    return runner.read_state(context)


@hookimpl
def faber_migration_preview(
    tool: str, context: RunContext, pending: list[LocalMigration]
) -> list[MigrationPreview] | None:
    if tool != TOOL:
        return None
    return runner.preview(context, pending)


@hookimpl
def faber_migration_apply(tool: str, context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome | None:
    if tool != TOOL:
        return None
    return runner.apply(context, pending)


@hookimpl
def faber_migration_dev(tool: str, context: RunContext) -> ApplyOutcome | None:
    # TypeORM has no interactive development command: dev mode applies pending migrations too.
    return None
