"""The status: the migration files and the history table's rows. A status imports this module,
not the applier, whose SQL helpers it needs only for the migrations still to run."""

from __future__ import annotations

from faber_core.context import RunContext
from faber_core.models import LocalMigration, MigrationState
from faber_plainsql import TOOL, history
from faber_plainsql.migrations import MigrationFile, read_migrations


def read_state(context: RunContext) -> MigrationState:
    files = read_migrations(context)
    with context.database.connect(application_name="faber plainsql status") as conn:
        records = history.read_records(conn)
    applied = {record.name for record in records if record.state == "applied"}
    local = [file.migration if file.migration.name in applied else as_it_runs(file) for file in files]
    return MigrationState(tool=TOOL, local=local, records=records)


def as_it_runs(file: MigrationFile) -> LocalMigration:
    """A migration still to run, saying whether it runs in one transaction: the preview and the
    applier go by ``transactional``, and faber records a migration that runs outside one (False)
    before applying it, so that a deploy killed inside it is named by the next run rather than run
    again from its start. Only these are parsed: a status with nothing pending parses no SQL. SQL
    that does not parse leaves it unset: faber's analysis refuses it before anything is touched."""
    from pglast.parser import ParseError  # what is_transactional raises for SQL PostgreSQL would not parse

    from faber_core.support.sql import is_transactional

    try:
        transactional = is_transactional(file.sql)
    except ParseError:
        return file.migration
    return file.migration.model_copy(update={"transactional": transactional})
