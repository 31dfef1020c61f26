"""faber's hooks for TypeORM: a Node runner handler (faber_core.support.node), the entry point's object."""

from __future__ import annotations

from faber_core.support.node import NodeHandler

from faber_typeorm import runner

handler = NodeHandler(
    runner.RUNNER,
    description="TypeORM migrations through the project's own MigrationExecutor",
    arguments=runner.runner_args,
    preview_notes=runner.preview_notes,
)
