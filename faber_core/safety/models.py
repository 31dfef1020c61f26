"""What the safety checks report, in the preview and deploy documents."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from faber_core.model_base import DeferredModel


class LintFinding(DeferredModel):
    """One finding of squawk or of faber's own rules on a migration's SQL."""

    rule: str
    severity: Literal["error", "warning", "info"] = Field(
        description="error: a lock risk or breaking change (a `block` environment refuses it); warning: style; "
        "info: a lock risk that does not apply to this table (`reason` says why)."
    )
    message: str
    help: str | None = Field(None, description="The safer alternative, when the linter names one.")
    line: int | None = Field(None, description="1-based line in the migration's SQL.")
    statement: str | None = Field(None, description="The start of the statement the finding is about.")
    table: str | None = Field(None, description="The table the statement works on, when the severity was judged by it.")
    reason: str | None = Field(None, description="Why the finding is informational here.")


class Blocker(DeferredModel):
    """A session that can make a migration wait for its locks: it holds locks on a table the
    migration touches, or has had a transaction open for long."""

    pid: int
    age_seconds: float = Field(description="How long its transaction has been open.")
    state: str | None = None
    application_name: str | None = None
    query: str = Field("", description="Its current or last statement, literals and secrets scrubbed.")
    tables: list[str] = Field(default_factory=list, description="Tables the migrations touch that it holds locks on.")
    lock_modes: list[str] = Field(default_factory=list)
    reason: str
    blocks_migration: bool = Field(
        description="True when the migration would wait for it: it holds locks on a table the migration "
        "touches, or (for a concurrent index build) its snapshot is older than the build."
    )


class PreflightReport(DeferredModel):
    policy: Literal["warn", "wait", "abort", "off"]
    tables: list[str] = Field(default_factory=list, description="Tables the pending SQL touches.")
    blockers: list[Blocker] = Field(default_factory=list)
    waited_seconds: float = 0.0
