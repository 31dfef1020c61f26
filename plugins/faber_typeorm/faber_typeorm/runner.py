"""The Python side of the TypeORM runner: which data source to load, and what the runner reports.

Every call starts ``node runner/runner.cjs`` in the project directory; the runner loads the
project's DataSource with the project's own TypeORM, points it at the environment's database
(``FABER_DATABASE_URL``, never argv) and drives TypeORM's ``MigrationExecutor``.
"""

from __future__ import annotations

from pathlib import Path

from faber_core import node_runner
from faber_core.context import RunContext
from faber_core.errors import ConfigError
from faber_core.models import ApplyOutcome, LocalMigration, MigrationPreview, MigrationState

from faber_typeorm import TOOL

DEFAULT_DATA_SOURCE = "data-source.js"
NON_TRANSACTIONAL_NOTE = (
    "The migration sets `transaction = false`: TypeORM runs it outside a transaction, so if a statement "
    "fails, the statements before it stay applied"
)

RUNNER = node_runner.NodeTool(
    name=TOOL,
    script=Path(__file__).parent / "runner" / "runner.cjs",
    config_key=f"database.{TOOL}.data_source",
    install="npm install typeorm pg",
)


def runner_args(context: RunContext) -> list[str]:
    data_source = context.tool_options.get("data_source", DEFAULT_DATA_SOURCE)
    if not isinstance(data_source, str) or not data_source:
        raise ConfigError(f"config: `{RUNNER.config_key}` must be a path relative to the project directory")
    return ["--data-source", data_source]


def read_state(context: RunContext) -> MigrationState:
    return node_runner.read_state(RUNNER, context, runner_args(context))


def apply(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    return node_runner.apply(RUNNER, context, pending, runner_args(context))


def preview(context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
    return node_runner.rehearse(
        RUNNER,
        context,
        pending,
        runner_args(context),
        extra_notes=lambda ran: [NON_TRANSACTIONAL_NOTE] if ran.transactional is False else [],
    )
