"""``faber migrate ENV --dry-run --rehearse``: measure the pending migrations instead of estimating.

The handler applies them, exactly as a deploy would, to a throwaway copy of the target with all
of its data (the engine's ``rehearsal_database``), on the same server; the copy is dropped
afterwards. The measured durations replace the estimates. Copying costs time and disk in
proportion to the database, which is why it is asked for, not automatic.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from faber_core.context import RunContext
from faber_core.models import LocalMigration, MigrationFailure

if TYPE_CHECKING:
    from faber_core.plugins import Plugins


@dataclasses.dataclass
class Measurement:
    durations: dict[str, float]
    failure: MigrationFailure | None
    """The migration that failed on the copy, its error redacted."""


def measure(context: RunContext, plugins: Plugins, pending: list[LocalMigration]) -> Measurement:
    with context.database.engine.rehearsal_database(context, include_data=True) as rehearsal:
        # A context of its own: its events must not reach the audit trail as real deploys.
        copy = dataclasses.replace(context, database=rehearsal.database, listeners=[], run_id=f"{context.run_id}-r")
        outcome = plugins.migration_apply(copy, pending)
    failure = outcome.failure
    return Measurement(
        durations={m.name: m.duration_seconds for m in outcome.applied},
        failure=failure.model_copy(update={"error": context.redactor.redact(failure.error)}) if failure else None,
    )
