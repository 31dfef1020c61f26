"""faber's hooks for Sequelize: a Node runner handler (faber_core.support.node), the entry point's object."""

from __future__ import annotations

from faber_core.support.node import NodeHandler

from faber_sequelize import runner

handler = NodeHandler(
    runner.RUNNER,
    description="Sequelize migrations (sequelize-cli layout) and SequelizeMeta",
    arguments=runner.runner_args,
    preview_notes=runner.preview_notes,
    project_files=runner.project_files,
)
