"""The Sequelize runner: which config section it uses, and the note every migration's preview carries.

Every call starts ``node runner/runner.cjs`` in the project directory; the runner reads
``.sequelizerc`` and the config as sequelize-cli does, opens the project's own Sequelize on the
environment's database (``FABER_DATABASE_URL``, never argv) and keeps ``SequelizeMeta``.
"""

from __future__ import annotations

from pathlib import Path

from faber_core.context import RunContext
from faber_core.errors import ConfigError
from faber_core.support.node import NodeTool, Rehearsed

from faber_sequelize import TOOL

RUNNER = NodeTool(
    name=TOOL,
    script=Path(__file__).parent / "runner" / "runner.cjs",
    config_key=".sequelizerc (config, migrations-path)",
    install="npm install sequelize pg",
)


def runner_args(context: RunContext) -> list[str]:
    """The faber environment's name picks the config section, unless ``database.sequelize.env`` names one."""
    args = ["--environment", context.environment]
    section = context.tool_options.get("env")
    if section is not None:
        if not isinstance(section, str) or not section:
            raise ConfigError(f"config: `database.{TOOL}.env` must name a section of the Sequelize config")
        args += ["--env", section]
    return args


NON_TRANSACTIONAL_NOTE = (
    "Sequelize runs a migration without a transaction: if a statement fails, the statements before it stay "
    "applied (protected environments rely on faber's backup and automatic rollback)"
)


def preview_notes(ran: Rehearsed) -> list[str]:
    return [NON_TRANSACTIONAL_NOTE]
