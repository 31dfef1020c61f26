"""The result documents of every command, shaped as the spec's JSON.

One envelope for success (``status``, ``operation``, ``environment``, ``result``, ``message``)
and one for errors (plus ``error``, ``code``, ``recovery``). The human renderer and ``--json``
read the same objects.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer

from faber_core.config import MAX_ENVIRONMENT_NAME
from faber_core.errors import FaberError, echoed, exit_code_for
from faber_core.model_base import DeferredModel
from faber_core.models import AppliedMigration, BackupLeftover, MigrationPreview
from faber_core.safety.models import LintFinding, PreflightReport
from faber_core.vocabulary import HealthCheckOutcome, Mode, Operation


# The writes check's result lives with the documents that carry it: a status, which never checks,
# need not import faber_core.backup.writes (which imports these from here).
class TableWrites(DeferredModel):
    table: str
    rows: int = Field(description="Rows inserted, updated or deleted since the backup, faber's own writes excluded.")


class SequenceDraws(DeferredModel):
    sequence: str
    values: int = Field(
        description="Values drawn (nextval) since the backup, by any session, faber's migrations included (a "
        "sequence's draws cannot be told apart): a restore sets the sequence back, and hands them out again."
    )


class WritesSinceBackup(DeferredModel):
    """What a restore of ``backup_id`` would discard, as far as PostgreSQL's counters tell."""

    backup_id: str
    status: Literal["none", "found", "unknown"]
    tables: list[TableWrites] = Field(
        default_factory=list,
        description="Per table; large objects as the rows of pg_catalog.pg_largeobject_metadata (one per object "
        "created, changed in owner or rights, or unlinked) and pg_catalog.pg_largeobject (one per 2 kB page written).",
    )
    sequences: list[SequenceDraws] = Field(
        default_factory=list,
        description="Sequences no table column owns that were drawn from since the backup (an owned one draws for "
        "its table's rows, counted in tables).",
    )
    attribution: Literal["exact", "unknown"] = Field(
        "exact",
        description="unknown: a handler did not report its migrations' writes, so faber's share is not known. Left "
        "out when the status is unknown: nothing was counted to attribute.",
    )
    in_flight: list[str] = Field(
        default_factory=list, description="Sessions holding write locks on user tables right now (pid, app, table)."
    )
    reason: str | None = Field(None, description="Why the result is unknown, or what it could not see.")

    @model_serializer(mode="wrap")
    def _drop_attribution_of_nothing(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if self.status == "unknown":
            data.pop("attribution", None)
        return data

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def discards_others(self) -> bool:
        """A restore would discard others' rows: rows were counted since the backup, or sessions
        were writing as they were counted (an open transaction whose rows a restore discards
        unseen if it commits before the restore locks its tables)."""
        return self.status == "found" or (self.status == "none" and bool(self.in_flight))

    def summary(self) -> str:
        if self.status == "unknown":
            return f"writes since {self.backup_id} unknown: {self.reason}"
        writing = f"sessions writing as faber checked (open transactions): {'; '.join(self.in_flight)}"
        if self.status == "none":
            counted = f"no rows written since {self.backup_id} by anything but faber"
            return f"{counted}, but {writing}" if self.in_flight else counted
        who = "the application (or faber's unmeasured migrations)" if self.attribution == "unknown" else "others"
        listed = ", ".join(
            [f"{t.table} ({t.rows} row{'s' if t.rows != 1 else ''})" for t in self.tables]
            + [f"sequence {s.sequence} ({s.values} value{'s' if s.values != 1 else ''} drawn)" for s in self.sequences]
        )
        also = f"; and {writing}" if self.in_flight else ""
        return f"rows written since {self.backup_id} by {who}: {listed}{also}"


class DeployResult(DeferredModel):
    migrations_applied: int
    migrations: list[AppliedMigration]
    total_duration_seconds: float
    backup_id: str | None
    health_check_before: HealthCheckOutcome
    health_check_after: HealthCheckOutcome
    mode: Mode
    lint: dict[str, list[LintFinding]] | None = Field(None, description="Findings that did not block, by migration.")
    lint_not_run: dict[str, str] | None = Field(
        None, description="Migrations the lint did not check, with why (code migrations whose rehearsal failed)."
    )
    preflight: PreflightReport | None = None
    staging_proof: dict[str, Any] | None = None
    unfinished_migrations_unchecked: str | None = Field(
        None,
        description="Why the check for migrations a killed deploy left in part could not run (faber's record of "
        "them could not be read), when it could not.",
    )
    backup_leftovers: list[BackupLeftover] | None = Field(
        None,
        description="--skip-backup: what killed runs left where the backup provider keeps its backups (a stopped "
        "rollback's copy), which the backup would have refused to go on beside; left out when the backup was not "
        "skipped.",
    )
    backup_leftovers_unchecked: str | None = Field(
        None, description="--skip-backup: why the provider could not look for them, when it could not."
    )

    @model_serializer(mode="wrap")
    def _drop_unchecked(self, handler: Any) -> dict[str, Any]:
        # Only a deploy that skipped its backup looked: the others' results are as they were.
        data = handler(self)
        if self.backup_leftovers is None:
            data.pop("backup_leftovers", None)
            data.pop("backup_leftovers_unchecked", None)
        return data


RollbackStatus = Literal[
    "not_needed",
    "success",
    "restored_side_by_side",
    "disabled",
    "no_backup",
    "lock_lost",
    "unreachable",
    "refused",
    "failed",
]


class FailedDeployResult(DeferredModel):
    """The ``result`` of every deploy that failed after its backup (docs/workflow.md, "One failure
    path"): the spec's fields, what committed, what remains and what the rollback step did.

    Fields that do not apply are left out of the JSON (``backup_id`` stays, null without a backup).
    """

    failed_migration: str | None = None
    backup_id: str | None
    migrations_applied_before_failure: int
    applied_migrations: list[str] = Field(description="Migrations of this deploy that committed, in order.")
    remaining_migrations: list[str] = Field(description="Pending migrations this deploy did not commit.")
    transaction_rolled_back: bool | None = None
    statements_committed: int | None = Field(
        None,
        description="The failed migration ran outside a transaction: how many of its statements committed "
        "before the one that failed.",
    )
    interrupted_by: str | None = Field(
        None, description="SIGINT, SIGTERM or SIGHUP, when an interrupt stopped the deploy."
    )
    migrations_applied: int | None = Field(None, description="After a failed post-deployment health check (spec).")
    health_check_after: HealthCheckOutcome | None = None
    auto_rollback_triggered: bool | None = None
    rollback_initiated: bool
    rollback_status: RollbackStatus
    rollback_reason: str | None = None
    rollback_error: str | None = None
    restored_endpoint: str | None = None
    restore_committed: bool | None = Field(
        None,
        description="When a signal interrupted the automatic restore: true if the restore had committed (the "
        "database is exactly the backup), false if not (exactly as before the restore); absent when unknown. "
        "Also true when the restore committed but its migration history could not be read to verify it, and "
        "false when faber's lock was lost before the restore's commit point (rollback_status lock_lost).",
    )
    writes_since_backup: WritesSinceBackup | None = Field(
        None, description="Before an automatic restore: rows others wrote since the backup (restore_with_app_writes)."
    )
    invalid_indexes: list[str] | None = Field(
        None, description="Invalid indexes the failure left (a failed CREATE INDEX CONCURRENTLY), to drop."
    )
    backup_leftovers: list[BackupLeftover] | None = Field(
        None, description="--skip-backup: what killed runs left where the backup provider keeps its backups."
    )
    backup_leftovers_unchecked: str | None = Field(
        None, description="--skip-backup: why the provider could not look for them, when it could not."
    )

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None or k == "backup_id"}


class RollbackResult(DeferredModel):
    """The ``result`` of ``faber rollback``: the backup and what its restore did. The same model is
    the result of its ``INTERRUPTED`` document (``interrupted_by`` set): a signal that stopped the
    restore or its proof still says, from the restore's own outcome, whether it committed.

    Fields that do not apply are left out of the JSON.
    """

    backup_id: str
    rollback_status: Literal["success", "restored_side_by_side", "failed"] | None = Field(
        None,
        description="success: the backup is restored (verified or not); restored_side_by_side: restored beside "
        "the database; failed (interrupted): the restore had not committed, the database is as it was. Absent "
        "from an interrupted rollback whose provider cannot tell.",
    )
    verified: bool | None = Field(None, description="Whether faber read the restored history and found the backup's.")
    migrations: list[str] | None = Field(None, description="The migrations the backup holds.")
    details: str = ""
    writes_since_backup: WritesSinceBackup | None = None
    interrupted_by: str | None = Field(None, description="SIGINT, SIGTERM or SIGHUP, when one stopped the rollback.")
    restore_committed: bool | None = Field(
        None,
        description="After a signal: true if the restore had committed (the database is exactly the backup), false "
        "if not; absent when the provider cannot tell. Also true on success when the restore committed but its "
        "migration history could not be read to verify it; with LOCKED, false when faber's lock was lost before the "
        "restore's commit point (the database as before), true when it was lost once the restore committed.",
    )
    original_unchanged: bool | None = None
    endpoint: str | None = None
    provider_data: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class NoPendingResult(DeferredModel):
    migrations_applied: Literal[0] = 0
    message: str = "No pending migrations"
    health_check_before: HealthCheckOutcome
    mode: Mode
    unfinished_migrations_unchecked: str | None = Field(
        None,
        description="Why the check for migrations a killed deploy left in part could not run (faber's record of "
        "them could not be read), when it could not.",
    )


class PreviewResult(DeferredModel):
    pending_migrations: int
    migrations: list[MigrationPreview]
    total_estimated_duration_seconds: float
    preflight: PreflightReport | None = None


class Success(DeferredModel):
    status: Literal["success"] = "success"
    operation: Operation
    environment: str | None = None
    result: Any
    message: str

    @property
    def exit_code(self) -> int:
        return 0


class Recovery(DeferredModel):
    backup_id: str | None = None
    rollback_command: str | None = None
    suggestions: list[str] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ErrorDocument(DeferredModel):
    status: Literal["error"] = "error"
    operation: Operation
    environment: str | None = None
    code: str
    error: str
    result: dict[str, Any] = Field(default_factory=dict)
    recovery: Recovery
    tool: str | None = Field(None, exclude=True)
    tool_output: str | None = Field(None, exclude=True)
    exit_code: int = Field(1, exclude=True, description="The CLI's exit code for this error (docs/exit-codes.md).")

    @field_validator("environment")
    @classmethod
    def _environment_as_echoed(cls, name: str | None) -> str | None:
        """The environment asked for; one too long to be a name (refused) only by its start and length."""
        return None if name is None else echoed(name, MAX_ENVIRONMENT_NAME)

    @model_serializer(mode="wrap")
    def _tool_output_key(self, handler: Any) -> dict[str, Any]:
        """The spec names the tool's own error text after the tool, e.g. ``prisma_output``."""
        data = handler(self)
        if self.tool_output:
            data[f"{self.tool or 'tool'}_output"] = self.tool_output
        return data

    @classmethod
    def from_error(
        cls, error: FaberError, *, operation: Operation, environment: str | None, tool: str | None = None
    ) -> ErrorDocument:
        rollback_command = None
        if error.backup_id and environment and error.rollback_advised:
            rollback_command = f"faber rollback {environment} --to {error.backup_id}"
        return cls(
            operation=operation,
            environment=environment,
            code=error.code,
            error=error.message,
            result=error.result,
            recovery=Recovery(
                backup_id=error.backup_id, rollback_command=rollback_command, suggestions=error.suggestions
            ),
            tool=tool,
            tool_output=error.tool_output,
            exit_code=exit_code_for(error.code),
        )
