"""The data that crosses the hook boundary: what plugins return and the core consumes.

Every hook returns one of these pydantic models, so a plugin's answer is validated where it
enters the core, and the same objects serialise into ``faber status --json`` and friends.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, computed_field, field_validator

from faber_core.interrupts import signal_name
from faber_core.model_base import DeferredModel
from faber_core.safety.models import LintFinding
from faber_core.vocabulary import Operation


class ToolInfo(DeferredModel):
    """A migration tool a plugin can drive, e.g. ``prisma``."""

    name: str
    description: str = ""
    options: type[BaseModel] | None = Field(
        None,
        description="The pydantic model of the tool's options, the config section database.<name>. faber "
        "validates the section with it before any run (unknown keys refused, with a suggestion) and lists it in "
        "`faber config schema`; read it with context.tool_options(Model). None: the tool takes no options. "
        "Give the model ConfigDict(defer_build=True): faber validates with a model of its own derived from it, so "
        "its own validator would be built at every start of faber for nothing.",
    )


class BackupProviderInfo(DeferredModel):
    """A backup provider a plugin offers, e.g. ``pg_dump`` or ``rds-snapshot``."""

    name: str
    description: str = ""
    options: type[BaseModel] | None = Field(
        None,
        description="The pydantic model of the provider's own keys of an environment's backup section (beside "
        "faber's provider and keep_last). faber validates every environment using the provider with it before any "
        "run and lists it in `faber config schema`; read it with context.backup_options(Model). None: no keys of "
        "its own. As for a tool's options, give the model ConfigDict(defer_build=True).",
    )
    engines: list[str] | None = Field(
        None,
        description="The database engines it backs up, by engine name (postgresql, mysql); faber refuses it for a "
        "target of another engine before anything runs. None: any engine.",
    )
    whole_instance: bool = Field(
        False,
        description="Its backups are of the whole server or instance its settings name (an RDS snapshot), not of the "
        "one database deployed, and a restore replaces all of it: faber refuses it for a fleet, whose targets "
        "are many databases (a target's rollback would replace the others' too) before anything runs.",
    )


class HealthCheckInfo(DeferredModel):
    """A health check a plugin runs, by the name ``health_checks`` lists it, e.g. ``connectivity``."""

    name: str
    description: str = ""


Resolution = Literal["applied", "rolled_back"]
"""How ``faber resolve`` marks a failed migration: ``rolled_back`` (its changes are gone, apply it
again) or ``applied`` (its changes were completed by hand, never apply it)."""

BackupStatus = Literal["available", "in_progress", "unusable"]
"""``available``: can be restored; ``in_progress``: still being made (a snapshot being taken);
``unusable``: cannot be restored, and :attr:`BackupRecord.problem` says why."""


class LocalMigration(DeferredModel):
    """A migration as it exists in the project's source tree."""

    name: str
    checksum: str | None = None
    path: str | None = Field(
        None,
        description="The migration's file, relative to the project directory. Shown in messages; deploy mode "
        "checks it is committed in git, and refuses a pending migration without one (it cannot vouch for it); "
        "and when it ends in .sql faber reads that file as the migration's SQL, to analyse it before the lock, "
        "lint it, estimate it and check preflight locks. Point it at the SQL the migration runs, or at a file that "
        "does not end in .sql (a code migration: faber then learns its SQL from the preview).",
    )
    transactional: bool | None = Field(
        None,
        description="False: it runs outside a transaction (every Sequelize migration, a TypeORM one with "
        "`transaction = false`, SQL with `CREATE INDEX CONCURRENTLY`), so a deploy killed inside it may leave part "
        "of it committed, which the tool does not record: faber records it before applying it, for the next run to "
        "name. True or None (unknown): nothing is recorded, unless faber's own analysis of the migration's SQL (a "
        "`path` ending in .sql, on PostgreSQL) finds a statement that cannot run in a transaction or a script's own "
        "BEGIN/COMMIT: such a migration is recorded whatever this says. Never the other way round: SQL faber finds "
        "transactional leaves a False as it is.",
    )
    handler_data: Any = Field(
        None,
        exclude=True,
        repr=False,
        description="The handler's own data about this migration, from faber_migration_status to "
        "faber_migration_validate, _preview and _apply (the same objects come back as ``pending``). faber never "
        "reads it and never writes it out.",
    )


class MigrationRecord(DeferredModel):
    """One row of the tool's own bookkeeping in the database."""

    name: str
    checksum: str | None = None
    state: Literal["applied", "failed", "rolled_back"]
    started_at: AwareDatetime | None = Field(
        None,
        description="When the attempt began, by the database server's clock, with its time zone. For a "
        "failed attempt faber names, as the restore that undoes it, only a backup taken before it began: one taken "
        "since holds what it left. faber compares it with backups' times (its own clock's) after measuring how far "
        "the server's clock is from its own. None: unknown.",
    )
    finished_at: datetime | None = None
    logs: str | None = None


class MigrationState(DeferredModel):
    """What a handler knows: the local migrations (in apply order) and the database's records.

    The derived lists are computed here, once, so every handler gets the same rules for what is
    pending, failed, missing locally or edited after it was applied.
    """

    tool: str
    local: list[LocalMigration]
    records: list[MigrationRecord]
    bookkeeping_table: str | None = Field(
        None,
        description="The table where the tool records applied migrations, as a schema-qualified SQL name, quoted "
        'where needed (\'"public"."migrations"\'). Rows written to it count as faber\'s own writes when faber '
        "checks what a restore would discard, measured by the handler or not. None: the tool keeps no table.",
    )

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


class MigrationRefusal(DeferredModel):
    """A pending migration its handler will not apply, found before anything is touched."""

    name: str = Field(description="The pending migration's name.")
    reason: str = Field(description="Why, as a sentence the user can act on; already scrubbed of credentials.")
    path: str | None = Field(
        None, description="The migration's file, relative to the project, when the refusal is about it."
    )


class MigrationPreview(DeferredModel):
    """What applying one pending migration would do."""

    name: str
    sql: str = Field(description="The SQL the migration runs; empty when the handler cannot tell.")
    estimated_duration_seconds: float = Field(
        0.0,
        description="Leave it: faber estimates it from the SQL and table statistics (or measures it with "
        "--rehearse). Set it, together with ``basis``, only when the handler measured the duration itself.",
    )
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
    rehearsal_failure: MigrationFailure | None = Field(
        None, exclude=True, description="That failure as its handler reported it, for the advice."
    )


TABLE_WRITES_DESCRIPTION = (
    "Rows the migration's transaction inserted, updated or deleted, per table ('schema.table'), as PostgreSQL "
    "counted them (pg_stat_xact_user_tables) just before it ended (the bookkeeping row may be left out: faber "
    "never counts rows there as the application's) and, for a failed migration, the rows its rolled-back "
    "transaction touched. None when the handler does not measure: "
    "faber then cannot tell its own writes from the application's (see faber_core.backup.writes)."
)


class AppliedMigration(DeferredModel):
    name: str
    status: Literal["applied"] = "applied"
    duration_seconds: float
    table_writes: dict[str, int] | None = Field(None, description=TABLE_WRITES_DESCRIPTION, exclude=True)


class MigrationFailure(DeferredModel):
    """The migration that failed, and whether its transaction left the database untouched."""

    name: str
    error: str
    output: str | None = Field(None, description="The tool's own error text, already scrubbed of credentials.")
    path: str | None = None
    transaction_rolled_back: bool = Field(
        description="True when the migration ran in a transaction that rolled back, so none of it remains."
    )
    sqlstate: str | None = Field(
        None,
        description="The server's error code when known: PostgreSQL's SQLSTATE or MySQL's error number. A lock "
        "timeout (55P03 on PostgreSQL, 1205 on MySQL) makes faber retry.",
    )
    statements_committed: int | None = Field(
        None,
        description="Outside a transaction: how many of its statements committed before the one that failed. "
        "0 tells faber nothing of it remains (no restore), apart from what the failing statement itself may leave "
        "(a failed CREATE INDEX CONCURRENTLY leaves an invalid index, which faber names). None: unknown.",
    )
    table_writes: dict[str, int] | None = Field(None, description=TABLE_WRITES_DESCRIPTION)
    killed_by: str | None = Field(
        None,
        description="The signal that killed the tool's process while the migration ran, or before it started "
        "(SIGKILL: the kernel's out-of-memory killer or a kill -9), where no error of the migration's own stopped it.",
    )
    started: bool = Field(
        True,
        description="False when the tool's process died before the migration started (after the previous one "
        "committed): none of it ran.",
    )

    @property
    def left_nothing(self) -> bool:
        """Whether none of the migration's statements remain committed."""
        return not self.started or self.transaction_rolled_back or self.statements_committed == 0


class ApplyOutcome(DeferredModel):
    """What an apply run did: the migrations it committed, in order, then the failure if any."""

    applied: list[AppliedMigration] = Field(default_factory=list)
    failure: MigrationFailure | None = None


class HealthCheckResult(DeferredModel):
    name: str
    status: Literal["passed", "failed", "warning", "skipped"]
    details: str = ""
    suggestions: list[str] = Field(
        default_factory=list,
        exclude=True,
        description="What to do about a failed check, first among the run's recovery suggestions (e.g. for a "
        "database that answers but refuses writes: point the URL at the primary). Not part of the check's JSON.",
    )


class LeftoverDatabase(DeferredModel):
    """A database a killed faber run left on the target's server (a swap restore's copy, a
    rehearsal): ``faber status`` names it with the statement that drops it, and never drops it."""

    name: str
    left_by: Literal["swap_restore", "rehearsal"]
    details: str = Field(description="What it is: the comment faber gave it, or on MySQL what its name says.")
    drop: str = Field(description="The statement that drops it, its name quoted.")


class InterruptedRestore(DeferredModel):
    """A restore killed in a step that is not atomic, still half done in the target (MySQL's table
    swap, its journal row in the database): the next run that takes faber's lock finishes it;
    ``faber status`` names it and changes nothing."""

    backup_id: str
    journal: str = Field(description="The table of the target that records the swap.")
    details: str


class BackupLeftover(DeferredModel):
    """Something a killed run left where the backup provider keeps its backups, outside the database
    (a cloud instance a restore made beside it), or, with ``kept``, something a finished run keeps
    there on purpose for a person to delete (the database a swap replaced): ``faber status`` names
    it with what to do, and changes nothing."""

    name: str
    details: str = Field(description="What it is, and where things stand because of it.")
    commands: list[str] = Field(default_factory=list, description="The commands that finish or remove it.")
    kept: bool = Field(
        False,
        description="Kept on purpose by a run that finished (for inspection; still billed), not left by a killed "
        "one: nothing is unfinished because of it.",
    )


class BackupRecord(DeferredModel):
    """A restore point, as a provider reports it and as its manifest stores it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    provider: str
    environment: str
    created_at: datetime
    reason: str = ""
    status: BackupStatus = "available"
    size_bytes: int | None = None
    location: str | None = None
    server_version: str | None = None
    database: str | None = None
    sha256: str | None = None
    migrations: list[tuple[str, str | None]] = Field(
        default_factory=list, description="Applied migrations (name, checksum) at backup time."
    )
    problem: str | None = Field(None, description="Why the backup cannot be used, when its status is unusable.")
    provider_data: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="The provider's own details (e.g. rds-snapshot's source instance), kept in the manifest and "
        "given back to faber_backup_restore; shown by `faber backups --json`, never read by faber.",
    )
    private_data: dict[str, JsonValue] = Field(
        default_factory=dict,
        exclude=True,
        repr=False,
        description="The provider's details that may be secrets (pg_dump: the values of the database's own "
        "settings), kept in the manifest and given back to faber_backup_restore; never shown: every dump of the "
        "record leaves them out but the manifest faber's backup store writes.",
    )

    @field_validator("created_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        # A time without a zone (a manifest written by hand, a provider's naive time) is UTC, as
        # faber writes them: faber compares backups' times with its own, which name their zone.
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class BackupPruneOutcome(DeferredModel):
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


class RestoreOutcome(DeferredModel):
    """What a restore did. ``original_unchanged`` marks a restore beside the database (a new
    instance): faber then has nothing to verify on the target and reports ``endpoint``.

    A restore stopped by SIGINT or SIGTERM returns :meth:`interrupted` instead of letting the
    interrupt through, saying on which side of its commit it stopped, so faber can tell the
    user exactly what the database holds. faber goes on with the interrupt itself.
    """

    backup_id: str
    status: Literal["success", "failed", "interrupted"]
    committed: bool | None = Field(
        None,
        description="For an interrupted restore: whether its commit (the transaction's COMMIT, the swap) had "
        "run. True: the database is exactly the backup; False: it is exactly as before the restore; None: the "
        "provider cannot tell, and details say where things stand. faber sets it True on a successful restore "
        "whose migration history it could not read to verify it.",
    )
    interrupted_by: Literal["SIGINT", "SIGTERM", "SIGHUP"] | None = None
    details: str = ""
    steps: list[str] = Field(default_factory=list)
    original_unchanged: bool = Field(
        False, description="True when the backup was restored beside the database, which still has its changes."
    )
    endpoint: str | None = Field(None, description="Where the restored database answers, when that changed.")
    suggestions: list[str] = Field(
        default_factory=list,
        description="What the user should do next, shown first among the run's suggestions: e.g. the command that "
        "removes what an interrupted restore left behind.",
    )
    provider_data: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="The provider's own details (cleanup commands, instance names), shown in `faber rollback`'s "
        "result under provider_data; never read by faber.",
    )

    @classmethod
    def interrupted(
        cls, backup_id: str, interrupt: KeyboardInterrupt, *, committed: bool | None, details: str = "", **fields: Any
    ) -> RestoreOutcome:
        """The outcome of a restore that ``interrupt`` stopped, once you have stopped what it ran."""
        return cls(
            backup_id=backup_id,
            status="interrupted",
            committed=committed,
            interrupted_by=signal_name(interrupt),
            details=details,
            **fields,
        )


class AuditEvent(DeferredModel):
    """One thing that happened during a run; progress output, audit sinks and spans all read these."""

    run_id: str
    kind: str
    environment: str | None = None
    operation: Operation | None = None
    timestamp: datetime
    data: dict[str, Any] = Field(default_factory=dict)
