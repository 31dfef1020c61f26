"""What a deploy would run: each pending migration's SQL, whether it runs in a transaction (as the
status read it), and an estimate from faber's reading of the statements."""

from __future__ import annotations

from faber_core.context import RunContext
from faber_core.models import LocalMigration, MigrationPreview
from faber_core.support.sql import estimate_seconds
from faber_plainsql.migrations import read_migrations

OUTSIDE_A_TRANSACTION = (
    "Runs statement by statement outside a transaction: if one fails, the statements before it stay applied"
)


def preview(context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
    sql = {file.migration.name: file.sql for file in read_migrations(context)}
    previews = []
    for migration in pending:
        transactional = migration.transactional is not False
        previews.append(
            MigrationPreview(
                name=migration.name,
                sql=sql[migration.name],
                estimated_duration_seconds=estimate_seconds(sql[migration.name]),
                transactional=transactional,
                notes=[] if transactional else [OUTSIDE_A_TRANSACTION],
            )
        )
    return previews
