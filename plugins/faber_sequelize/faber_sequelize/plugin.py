"""faber's hooks for Sequelize: answers when the configured ``database.migration_tool`` is ``sequelize``."""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import ApplyOutcome, LocalMigration, MigrationPreview, MigrationState, ToolInfo

from faber_sequelize import TOOL, runner


@hookimpl
def faber_migration_tools() -> list[ToolInfo]:
    return [ToolInfo(name=TOOL, description="Sequelize migrations (sequelize-cli layout) and SequelizeMeta")]


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
    # Sequelize has no interactive development command: dev mode applies pending migrations too.
    return None
