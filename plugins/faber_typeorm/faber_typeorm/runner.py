"""The TypeORM runner: which data source it loads, and the note on a migration outside a transaction.

Every call starts ``node runner/runner.cjs`` in the project directory; the runner loads the
project's DataSource with the project's own TypeORM, points it at the environment's database
(``FABER_DATABASE_URL``, never argv) and drives TypeORM's ``MigrationExecutor``.
"""

from __future__ import annotations

from pathlib import Path

from faber_core.context import RunContext
from faber_core.errors import ConfigError
from faber_core.support.node import NodeTool, Rehearsed

from faber_typeorm import TOOL

DEFAULT_DATA_SOURCE = "data-source.js"

RUNNER = NodeTool(
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


NON_TRANSACTIONAL_NOTE = (
    "The migration sets `transaction = false`: TypeORM runs it outside a transaction, so if a statement "
    "fails, the statements before it stay applied"
)


def preview_notes(ran: Rehearsed) -> list[str]:
    return [NON_TRANSACTIONAL_NOTE] if ran.transactional is False else []
