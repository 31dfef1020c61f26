"""faber's hooks for plain SQL migrations; faber calls them only for the tool this plugin declares.

faber imports every installed plugin at each start, and calls these hooks only in a project of
this tool: each hook imports the module doing its work, so that the others' starts do not (the
applier and the preview bring faber's SQL helpers, ~30 M instructions).
"""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import ApplyOutcome, LocalMigration, MigrationPreview, MigrationState, Resolution, ToolInfo
from faber_plainsql import TOOL
from faber_plainsql.migrations import PlainSqlOptions


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
    from faber_plainsql.status import read_state

    return read_state(context)


@hookimpl
def faber_migration_preview(context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
    from faber_plainsql.preview import preview

    return preview(context, pending)


@hookimpl
def faber_migration_apply(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    from faber_plainsql import applier

    return applier.apply(context, pending)


@hookimpl
def faber_migration_resolve(context: RunContext, name: str, resolution: Resolution) -> MigrationState:
    from faber_plainsql import applier

    return applier.resolve(context, name, resolution)
