"""What applying pending migrations would do, read from the files alone (no database access)."""

from __future__ import annotations

from faber_core.context import RunContext
from faber_core.models import LocalMigration, MigrationPreview
from faber_core.support.sql import estimate_seconds, is_transactional

from faber_prisma import is_mysql
from faber_prisma.migrations import SCRIPT_NAME, MigrationFolder, read_migrations

NON_TRANSACTIONAL_NOTE = (
    "Runs outside a transaction (it has a statement PostgreSQL refuses in a transaction block, such as "
    "CREATE INDEX CONCURRENTLY): if a statement fails, the statements before it stay applied"
)
MYSQL_NOTE = (
    "Runs outside a transaction, as Prisma runs it on MySQL/MariaDB (which commits every DDL statement on "
    "its own): if a statement fails, the statements before it stay applied and the migration stays failed "
    "until resolved; protected environments rely on faber's backup and automatic rollback"
)


def preview(context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
    folders = {folder.name: folder for folder in read_migrations(context)}
    return [_preview_one(context, migration, folders.get(migration.name)) for migration in pending]


def _preview_one(context: RunContext, migration: LocalMigration, folder: MigrationFolder | None) -> MigrationPreview:
    if folder is None or folder.script is None:
        return MigrationPreview(
            name=migration.name,
            sql="",
            estimated_duration_seconds=0,
            transactional=None,
            notes=[f"{SCRIPT_NAME} is missing: deploys refuse to run until it is restored or the folder removed"],
        )
    transactional, notes = _transactionality(context, folder)
    return MigrationPreview(
        name=folder.name,
        # A migration may create a role with a password; the preview is printed and logged.
        sql=context.redactor.redact(folder.sql),
        estimated_duration_seconds=estimate_seconds(folder.sql),
        transactional=transactional,
        notes=notes,
    )


def _transactionality(context: RunContext, folder: MigrationFolder) -> tuple[bool | None, list[str]]:
    """Whether the migration runs in one transaction, and the notes saying what follows."""
    if is_mysql(context):
        return False, [MYSQL_NOTE]
    from pglast.parser import ParseError  # with the parser is_transactional imports

    try:
        transactional = is_transactional(folder.sql)
    except ParseError as exc:
        return None, [f"The SQL does not parse, applying it will fail: {context.redactor.redact(str(exc))}"]
    return transactional, [] if transactional else [NON_TRANSACTIONAL_NOTE]
