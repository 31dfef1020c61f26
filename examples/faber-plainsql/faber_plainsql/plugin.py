"""faber's hooks for plain SQL migrations: each answers for the tool ``plainsql`` only."""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import ApplyOutcome, LocalMigration, MigrationPreview, MigrationState, ToolInfo

from faber_plainsql import TOOL, applier
from faber_plainsql.preview import preview


@hookimpl
def faber_migration_tools() -> list[ToolInfo]:
    return [ToolInfo(name=TOOL, description="Plain SQL files named V<version>__<description>.sql, in version order")]


@hookimpl
def faber_migration_status(tool: str, context: RunContext) -> MigrationState | None:
    if tool != TOOL:
        return None
    return applier.read_state(context)


@hookimpl
def faber_migration_preview(
    tool: str, context: RunContext, pending: list[LocalMigration]
) -> list[MigrationPreview] | None:
    if tool != TOOL:
        return None
    return preview(context, pending)


@hookimpl
def faber_migration_apply(tool: str, context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome | None:
    if tool != TOOL:
        return None
    return applier.apply(context, pending)


@hookimpl
def faber_migration_resolve(tool: str, context: RunContext, name: str, resolution: str) -> MigrationState | None:
    if tool != TOOL:
        return None
    return applier.resolve(context, name, resolution)
