"""The status: the migration files and the history table's rows. A status imports this module,
not the applier, whose SQL helpers it does not need."""

from __future__ import annotations

from faber_core.context import RunContext
from faber_core.models import MigrationState
from faber_plainsql import TOOL, history
from faber_plainsql.migrations import read_migrations


def read_state(context: RunContext) -> MigrationState:
    local = [file.migration for file in read_migrations(context)]
    with context.database.connect(application_name="faber plainsql status") as conn:
        return MigrationState(tool=TOOL, local=local, records=history.read_records(conn))
