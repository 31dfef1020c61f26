"""The Sequelize runner: which config section it uses, and the note every migration's preview carries.

A run starts ``node runner/runner.cjs`` once in the project directory and sends it every request
(status, apply); the runner reads ``.sequelizerc`` and the config as sequelize-cli does, opens the
project's own Sequelize on the request's database (its URL comes in the request, never in the
environment or argv) and keeps ``SequelizeMeta``.
"""

from __future__ import annotations

from pathlib import Path

from faber_core.context import RunContext
from faber_core.errors import FaberError
from faber_core.support.node import NodeTool, NodeToolOptions, Rehearsed, ask_outside_a_run
from pydantic import Field

from faber_sequelize import TOOL


class SequelizeOptions(NodeToolOptions):
    """``database.sequelize`` in the config."""

    env: str | None = Field(
        None,
        min_length=1,
        description="The section of the Sequelize config to use; default: the faber environment's name.",
    )


RUNNER = NodeTool(
    name=TOOL,
    script=Path(__file__).parent / "runner" / "runner.cjs",
    config_key=".sequelizerc (config, migrations-path)",
    install="npm install sequelize pg",
    options=SequelizeOptions,
)


def project_files(project_dir: Path) -> list[str] | None:
    """``.sequelizerc`` and the config it names (else sequelize-cli's default one), where they exist,
    found by the runner as every run finds them (``faber init``); None where the runner cannot tell
    (no Node, the project's packages not installed, a ``.sequelizerc`` that does not load)."""
    try:
        answer = ask_outside_a_run(RUNNER, project_dir, "layout")
    except (FaberError, OSError):
        return None
    layout = answer.first("layout")
    if layout is None:
        return None
    return [name for name in (".sequelizerc", layout["config"]) if (project_dir / name).is_file()]


def runner_args(context: RunContext) -> list[str]:
    """The faber environment's name picks the config section, unless ``database.sequelize.env`` names one."""
    section = context.tool_options(SequelizeOptions).env
    return ["--environment", context.environment, *(["--env", section] if section is not None else [])]


NON_TRANSACTIONAL_NOTE = (
    "Sequelize runs a migration without a transaction: if a statement fails, the statements before it stay "
    "applied (protected environments rely on faber's backup and automatic rollback, {rollback})"
)
# What that rollback does with the application's writes, by whether the engine counts them.
ROLLBACK_REFUSED = (
    "which, once the migrations wrote rows, faber cannot tell from the application's, is refused under "
    "restore_with_app_writes: refuse"
)
ROLLBACK_DISCARDS_WRITES = (
    "which restores anyway: faber cannot count the application's writes on {engine}, so whatever it wrote since "
    "the backup is not in the restored database"
)


def preview_notes(context: RunContext, ran: Rehearsed) -> list[str]:
    engine = context.database.engine
    rollback = ROLLBACK_REFUSED if engine.supports("write_counters") else ROLLBACK_DISCARDS_WRITES
    return [NON_TRANSACTIONAL_NOTE.format(rollback=rollback.format(engine=engine.label))]
