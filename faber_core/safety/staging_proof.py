"""Staging proof: production refuses migrations that have not succeeded in staging first.

Each environment's deployment history lives in its own database (``faber_deployments`` in the
faber schema), so production cannot see staging's record in its own. faber reads it where it is:
through staging's ``database_url_env``, which must then be set in production's deploy job too (a
read-only role is enough: only ``faber_deployments`` is read). When it is not set, or staging
cannot be reached, the check fails closed: a deploy that cannot prove the migrations succeeded
in staging does not run, unless ``--skip-staging-proof`` is given, and that override is recorded
as a ``staging_proof.skipped`` event in the audit trail.

A migration counts as proven when a successful ``deploy-migrations`` run in staging applied it
with the same name and checksum.
"""

from __future__ import annotations

import os

from faber_core import events
from faber_core.context import Database, RunContext
from faber_core.errors import ConfigError, StagingProofMissing
from faber_core.models import LocalMigration
from faber_core.safety.history import HISTORY_TABLE
from faber_core.secrets import Secret


def check(context: RunContext, pending: list[LocalMigration], *, skip: bool) -> dict[str, object] | None:
    """Raise :class:`StagingProofMissing` unless every pending migration succeeded in the
    predecessor environment; returns what was checked, for the result document."""
    predecessor = context.settings.requires_success_in
    if not predecessor:
        return None
    if skip:
        context.emit(events.STAGING_PROOF_SKIPPED, predecessor=predecessor, migrations=_names(pending))
        return {"requires_success_in": predecessor, "status": "skipped", "skipped_by": "--skip-staging-proof"}
    proven = succeeded_migrations(context, predecessor)
    # The history records names as its run's output showed them, a password's word masked (a staging
    # password "admin" records 001_add_admin_roles as 001_add_***_roles): the pending names are
    # compared as this run masks them, which knows the predecessor's password too.
    redact = context.redactor.redact
    unproven = [m for m in pending if m.checksum is None or (redact(m.name), m.checksum) not in proven]
    if unproven:
        raise StagingProofMissing(
            f"{len(unproven)} pending migration(s) have not been deployed successfully to {predecessor} "
            f"with the same checksum: {', '.join(_names(unproven))}. Nothing was applied",
            result={"requires_success_in": predecessor, "unproven_migrations": _names(unproven)},
            suggestions=[
                f"Deploy them to {predecessor} first: faber migrate {predecessor}",
                "A migration edited after its staging deploy needs a new staging deploy",
                f"Or override (recorded in the audit trail): faber migrate {context.environment} --skip-staging-proof",
            ],
        )
    context.emit(events.STAGING_PROOF_PASSED, predecessor=predecessor, migrations=_names(pending))
    return {"requires_success_in": predecessor, "status": "passed", "migrations": _names(pending)}


def succeeded_migrations(context: RunContext, predecessor: str) -> set[tuple[str, str]]:
    """(name, checksum) of every migration applied by a successful deploy in ``predecessor``,
    read from that environment's own database, the name masked as this run masks names."""
    database = predecessor_database(context, predecessor)
    try:
        with database.connect(application_name="faber staging proof") as conn:
            rows = database.engine.successful_migrations(conn, context.config.database.faber_schema, predecessor)
    except database.engine.driver_error as exc:
        raise StagingProofMissing(
            f"Cannot read the deployment history of {predecessor} to prove the migrations succeeded there: "
            + context.redactor.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__),
            suggestions=[
                f"Check that {database.source} points at the {predecessor} database and is reachable from here",
                f"Or override (recorded in the audit trail): faber migrate {context.environment} --skip-staging-proof",
            ],
        ) from None
    return {(context.redactor.redact(name), checksum) for name, checksum, _ in rows}


def predecessor_database(context: RunContext, predecessor: str) -> Database:
    settings = context.config.environment(predecessor)
    variable = settings.database_url_env
    if predecessor == context.environment:
        raise ConfigError(f"{context.environment} cannot require success in itself (requires_success_in)")
    if not variable:
        raise ConfigError(
            f"{context.environment} requires success in {predecessor}, which has no database_url_env to read "
            "its history from",
            suggestions=[f"Set database.environments.{predecessor}.database_url_env"],
        )
    value = os.environ.get(variable, "").strip()
    if not value:
        raise StagingProofMissing(
            f"{context.environment} requires success in {predecessor}, but {variable} is not set, so "
            f"{predecessor}'s deployment history cannot be read. Nothing was applied",
            result={"requires_success_in": predecessor},
            suggestions=[
                f"Export {variable} in this job (a role that can read {context.config.database.faber_schema}."
                f"{HISTORY_TABLE} is enough)",
                f"Or override (recorded in the audit trail): faber migrate {context.environment} --skip-staging-proof",
            ],
        )
    context.redactor.add(value)
    database = Database(Secret(value), source=f"${variable}", connect_timeout=context.settings.connect_timeout_seconds)
    for secret in database.secrets():
        context.redactor.add(secret)
    return database


def _names(migrations: list[LocalMigration]) -> list[str]:
    return [migration.name for migration in migrations]
