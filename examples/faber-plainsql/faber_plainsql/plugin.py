"""faber's hooks for plain SQL migrations; faber calls them only for the tool this plugin declares."""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import ApplyOutcome, LocalMigration, MigrationPreview, MigrationState, Resolution, ToolInfo
from faber_plainsql import TOOL, applier
from faber_plainsql.migrations import PlainSqlOptions
from faber_plainsql.preview import preview


@hookimpl
def faber_migration_tools() -> list[ToolInfo]:
    return [
        ToolInfo(
            name=TOOL,
            description="Plain SQL files named V<version>__<description>.sql, in version order",
            options=PlainSqlOptions,
        )
    ]


@hookimpl
def faber_migration_status(context: RunContext) -> MigrationState:
    return applier.read_state(context)


@hookimpl
def faber_migration_preview(context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
    return preview(context, pending)


@hookimpl
def faber_migration_apply(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    return applier.apply(context, pending)


@hookimpl
def faber_migration_resolve(context: RunContext, name: str, resolution: Resolution) -> MigrationState:
    return applier.resolve(context, name, resolution)
