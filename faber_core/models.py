"""The data that crosses the hook boundary: what plugins return and the core consumes.

Every hook returns one of these pydantic models, so a plugin's answer is validated where it
enters the core, and the same objects serialise into ``faber status --json`` and friends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from faber_core.safety.models import LintFinding


class ToolInfo(BaseModel):
    """A migration tool a plugin can drive, e.g. ``prisma``."""

    name: str
    description: str = ""


class BackupProviderInfo(BaseModel):
    """A backup provider a plugin offers, e.g. ``pg_dump`` or ``rds-snapshot``."""

    name: str
    description: str = ""


class HealthCheckInfo(BaseModel):
    """A health check a plugin runs, by the name ``health_checks`` lists it, e.g. ``connectivity``."""

    name: str
    description: str = ""


class LocalMigration(BaseModel):
    """A migration as it exists in the project's source tree."""

    name: str
    checksum: str | None = None
    path: str | None = Field(None, description="Path relative to the project directory, for messages.")


class MigrationRecord(BaseModel):
    """One row of the tool's own bookkeeping in the database."""

    name: str
    checksum: str | None = None
    state: Literal["applied", "failed", "rolled_back"]
    started_at: datetime | None = None
    finished_at: datetime | None = None
    logs: str | None = None


class MigrationState(BaseModel):
    """What a handler knows: the local migrations (in apply order) and the database's records.

    The derived lists are computed here, once, so every handler gets the same rules for what is
    pending, failed, missing locally or edited after it was applied.
    """

    tool: str
    local: list[LocalMigration]
    records: list[MigrationRecord]

    def _applied_records(self) -> dict[str, MigrationRecord]:
        return {r.name: r for r in self.records if r.state == "applied"}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def applied(self) -> list[str]:
        return list(self._applied_records())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def pending(self) -> list[str]:
        applied = self._applied_records()
        return [m.name for m in self.local if m.name not in applied]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def failed(self) -> list[str]:
        """Migrations that failed and were neither rolled back nor applied later."""
        applied = self._applied_records()
        return [r.name for r in self.records if r.state == "failed" and r.name not in applied]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def missing_locally(self) -> list[str]:
        local = {m.name for m in self.local}
        return [name for name in self._applied_records() if name not in local]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def checksum_mismatches(self) -> list[str]:
        applied = self._applied_records()
        return [
            m.name
            for m in self.local
            if m.name in applied
            and m.checksum is not None
            and applied[m.name].checksum is not None
            and applied[m.name].checksum != m.checksum
        ]

    def pending_migrations(self) -> list[LocalMigration]:
        pending = set(self.pending)
        return [m for m in self.local if m.name in pending]

    def applied_fingerprint(self) -> list[tuple[str, str | None]]:
        """Applied migrations with their checksums: what a backup manifest records and a restore must reproduce."""
        return [(r.name, r.checksum) for r in self._applied_records().values()]


class MigrationPreview(BaseModel):
    """What applying one pending migration would do."""

    name: str
    sql: str
    estimated_duration_seconds: float
    transactional: bool | None = Field(None, description="Whether it runs in one transaction; None when unknown.")
    notes: list[str] = Field(default_factory=list)
    basis: str | None = Field(
        None,
        description="How the estimate was made. Leave None and faber estimates from table statistics; "
        "set it when the handler measured the duration itself.",
    )
    lint: list[LintFinding] = Field(default_factory=list, description="Filled in by faber's lint (docs/safety.md).")
    rehearsal_error: str | None = Field(
        None, description="Filled in by --rehearse when this migration failed on the throwaway copy."
    )


TABLE_WRITES_DESCRIPTION = (
    "Rows the migration's transaction inserted, updated or deleted, per table ('schema.table'), as PostgreSQL "
    "counted them (pg_stat_xact_user_tables) just before it ended, including the bookkeeping row and, for a "
    "failed migration, the rows its rolled-back transaction touched. None when the handler does not measure: "
    "faber then cannot tell its own writes from the application's (see faber_core.backup.writes)."
)


class AppliedMigration(BaseModel):
    name: str
    status: Literal["applied"] = "applied"
    duration_seconds: float
    table_writes: dict[str, int] | None = Field(None, description=TABLE_WRITES_DESCRIPTION, exclude=True)


class MigrationFailure(BaseModel):
    """The migration that failed, and whether its transaction left the database untouched."""

    name: str
    error: str
    output: str | None = Field(None, description="The tool's own error text, already scrubbed of credentials.")
    path: str | None = None
    transaction_rolled_back: bool = Field(
        description="True when the migration ran in a transaction that rolled back, so none of it remains."
    )
    sqlstate: str | None = Field(
        None, description="PostgreSQL's error code when known; 55P03 (lock timeout) makes faber retry."
    )
    statements_committed: int | None = Field(
        None,
        description="Outside a transaction: how many of its statements committed before the one that failed. "
        "0 tells faber nothing of it remains (no restore), apart from what the failing statement itself may leave "
        "(a failed CREATE INDEX CONCURRENTLY leaves an invalid index, which faber names). None: unknown.",
    )
    table_writes: dict[str, int] | None = Field(None, description=TABLE_WRITES_DESCRIPTION)

    @property
    def left_nothing(self) -> bool:
        """Whether none of the migration's statements remain committed."""
        return self.transaction_rolled_back or self.statements_committed == 0


class ApplyOutcome(BaseModel):
    """What an apply run did: the migrations it committed, in order, then the failure if any."""

    applied: list[AppliedMigration] = Field(default_factory=list)
    failure: MigrationFailure | None = None


class HealthCheckResult(BaseModel):
    name: str
    status: Literal["passed", "failed", "warning", "skipped"]
    details: str = ""


class BackupRecord(BaseModel):
    """A restore point, as a provider reports it and as its manifest stores it."""

    model_config = ConfigDict(extra="allow")

    id: str
    provider: str
    environment: str
    created_at: datetime
    reason: str = ""
    status: str = "available"
    size_bytes: int | None = None
    location: str | None = None
    server_version: str | None = None
    database: str | None = None
    sha256: str | None = None
    migrations: list[tuple[str, str | None]] = Field(
        default_factory=list, description="Applied migrations (name, checksum) at backup time."
    )
    problem: str | None = Field(None, description="Why the backup cannot be used, when its status says so.")


class BackupPruneOutcome(BaseModel):
    """What ``faber backups prune`` did (or, with ``dry_run``, would do) to an environment's backups."""

    keep_last: int
    dry_run: bool = False
    pruned: list[str] = Field(default_factory=list, description="Backups deleted (or that would be).")
    kept: list[str] = Field(default_factory=list, description="The newest ``keep_last`` usable backups.")
    in_use: list[str] = Field(
        default_factory=list, description="Beyond ``keep_last`` but kept: a running deploy or restore uses them."
    )
    unreadable: list[str] = Field(
        default_factory=list, description="Backups whose manifest cannot be read: never pruned, left for a person."
    )
    freed_bytes: int = 0


class RestoreOutcome(BaseModel):
    backup_id: str
    status: Literal["success", "failed"]
    details: str = ""
    steps: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)


class AuditEvent(BaseModel):
    """One thing that happened during a run; progress output, audit sinks and spans all read these."""

    run_id: str
    kind: str
    environment: str | None = None
    operation: str | None = None
    timestamp: datetime
    data: dict[str, Any] = Field(default_factory=dict)
