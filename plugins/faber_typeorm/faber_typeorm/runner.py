"""The TypeORM runner: which data source it loads, and the note on a migration outside a transaction.

A run starts ``node runner/runner.cjs`` once in the project directory and sends it every request
(status, apply); the runner loads the project's DataSource with the project's own TypeORM, points
it at the request's database (its URL comes in the request, never in the environment or argv)
and drives TypeORM's ``MigrationExecutor``.
"""

from __future__ import annotations

from pathlib import Path

from faber_core.context import RunContext
from faber_core.support.node import NodeTool, NodeToolOptions, Rehearsed
from pydantic import Field

from faber_typeorm import TOOL

DEFAULT_DATA_SOURCE = "data-source.js"


class TypeormOptions(NodeToolOptions):
    """``database.typeorm`` in the config."""

    data_source: str = Field(
        DEFAULT_DATA_SOURCE,
        min_length=1,
        description="The module exporting the project's DataSource, relative to the project directory.",
    )


RUNNER = NodeTool(
    name=TOOL,
    script=Path(__file__).parent / "runner" / "runner.cjs",
    config_key=f"database.{TOOL}.data_source",
    install="npm install typeorm pg",
    options=TypeormOptions,
)


def runner_args(context: RunContext) -> list[str]:
    return ["--data-source", context.tool_options(TypeormOptions).data_source]


NON_TRANSACTIONAL_NOTE = (
    "The migration sets `transaction = false`: TypeORM runs it outside a transaction, so if a statement "
    "fails, the statements before it stay applied"
)


def preview_notes(context: RunContext, ran: Rehearsed) -> list[str]:
    # Where DDL is not transactional (MySQL), no migration runs in one whatever its class says, and
    # faber's own note says so: this one is only true of a class that opts out.
    opted_out = ran.transactional is False and context.database.engine.transactional_ddl
    return [NON_TRANSACTIONAL_NOTE] if opted_out else []
