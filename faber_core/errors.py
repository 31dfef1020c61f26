"""Error types: each has a stable code, a message, recovery suggestions and one exit code.

The CLI maps an error to its exit code through ``EXIT_CODES`` and nowhere else, so CI scripts
can branch on the code (see docs/exit-codes.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

    from faber_core.secrets import Redactor


def echoed(value: str, limit: int = 80, show: Callable[[str], str] = str) -> str:
    """``value`` as an error repeats what it was given (``show`` of it: ``repr`` to quote it): whole,
    or where it is longer than ``limit`` its start and its length (a name a megabyte long is not
    sent back, twice, to a CI log)."""
    if len(value) <= limit:
        return show(value)
    return f"{show(value[: limit // 2])}… ({len(value)} characters)"


def print_debug_traceback(exc: BaseException, redactor: Redactor) -> None:
    """With ``FABER_DEBUG`` set, the traceback of an unexpected exception (a bug) on stderr,
    through the run's redactor like every output."""
    if not os.environ.get("FABER_DEBUG"):
        return
    import sys
    import traceback

    sys.stderr.write(redactor.redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))


class FaberError(Exception):
    """Base class of every error faber reports as a structured result."""

    code = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        suggestions: list[str] | None = None,
        result: dict[str, Any] | None = None,
        backup_id: str | None = None,
        rollback_advised: bool = True,
        tool_output: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.suggestions = list(suggestions or [])
        self.result = dict(result or {})
        self.backup_id = backup_id
        self.rollback_advised = rollback_advised
        """False when restoring ``backup_id`` would be wrong advice (nothing to undo, or already restored):
        the document then names the backup without a ``rollback_command``."""
        self.tool_output = tool_output


class ConfigError(FaberError):
    """Invalid input: bad arguments, malformed config, unknown environment or tool, missing env var."""

    code = "CONFIG_INVALID"


class SessionRefused(ConfigError):
    """faber refused a session it had just opened to the database: the route to it does not keep
    what faber's sessions need (a connection pooler that shares server sessions between clients,
    where neither faber's lock nor its sessions' timeouts would hold). Raised only by opening a
    connection. At a run's start nothing changed (exit 2); once a deploy's migrations may have
    committed, its failure path takes the database for one it cannot reach safely (``unreachable``)."""


class HealthCheckFailed(FaberError):
    code = "HEALTH_CHECK_FAILED"


class ToolCannotConnect(HealthCheckFailed):
    """A migration tool's own driver could not connect to the database: exit 3, as when faber's own
    connection fails. ``details`` says why; a status read words it for the command that ran
    (:func:`faber_core.status_reads.connection_failed`)."""

    def __init__(self, message: str, *, details: str, suggestions: list[str] | None = None) -> None:
        super().__init__(message, suggestions=suggestions, result={"details": details})
        self.details = details


class ReadBlocked(HealthCheckFailed):
    """A read of the database waited longer than ``query_lock_timeout_seconds`` for a lock another
    session holds: exit 3, as an unreachable database (it cannot answer now); no health check ran."""


class BackupFailed(FaberError):
    code = "BACKUP_FAILED"

    @classmethod
    def unrestorable(cls, reason: str, suggestions: list[str]) -> BackupFailed:
        """A backup refused before it was taken, ``reason`` saying why no rollback could restore it:
        a deploy stops there, nothing applied, rather than go on with a backup that would fail it."""
        return cls(
            f"No backup taken and nothing applied: {reason}, so the backup could not be restored if a migration failed",
            result={"backup_error": reason},
            suggestions=suggestions,
        )


class ApprovalRequired(FaberError):
    code = "APPROVAL_REQUIRED"


class WritesDuringRestore(ApprovalRequired):
    """A restore found, right before discarding the database's rows (in place: its tables locked, the
    application's sessions ended; by swap: before making its copy the database), rows the
    application wrote since faber checked before the restore, which the environment's
    ``restore_with_app_writes`` does not let it discard; it rolled back (the copy dropped), the
    database is unchanged."""


class MigrationFailed(FaberError):
    code = "MIGRATION_FAILED"


class Locked(FaberError):
    code = "LOCKED"


class LockLost(Locked):
    """faber's lock session ended (e.g. ``pg_terminate_backend``) or let the lock go during a deploy:
    another run may have taken the lock and changed the database since."""


class RestoreFailed(FaberError):
    code = "RESTORE_FAILED"


class LintBlocked(FaberError):
    """The lint found errors (lock risks or breaking changes) in a pending migration, in an environment
    whose policy blocks."""

    code = "LINT_BLOCKED"


class StagingProofMissing(FaberError):
    """A pending migration has not been deployed successfully in the environment that must come first."""

    code = "STAGING_PROOF_MISSING"


class PreflightBlocked(FaberError):
    """Sessions holding locks on the migrations' tables, in an environment whose preflight aborts or waits."""

    code = "PREFLIGHT_BLOCKED"


class PluginError(FaberError):
    """A plugin broke its contract: it declares a tool or provider but lacks a hook for it or
    answers nothing, or it answered something faber cannot use (a preview of other migrations).
    A bug in that plugin, so exit 1 like faber's own bugs; the message names the package."""

    code = "PLUGIN_ERROR"


class Interrupted(FaberError):
    """SIGINT (Ctrl-C) or SIGTERM (what CI runners and Kubernetes send) stopped the run."""

    code = "INTERRUPTED"

    @classmethod
    def by(
        cls,
        interrupt: KeyboardInterrupt,
        while_doing: str = "",
        *,
        result: dict[str, Any] | None = None,
        suggestions: list[str] | None = None,
    ) -> Interrupted:
        """The error for a step of yours that ``interrupt`` stopped (faber raises SIGTERM and SIGHUP
        as :class:`KeyboardInterrupt` too): "Interrupted by SIGTERM", then `` while_doing`` (e.g.
        "while RDS was making snapshot ..."), and the signal's name in ``result["interrupted_by"]``."""
        from faber_core.interrupts import signal_name

        name = signal_name(interrupt)
        return cls(
            f"Interrupted by {name} {while_doing}".rstrip(),
            result={"interrupted_by": name, **(result or {})},
            suggestions=suggestions,
        )


EXIT_CODES: dict[str, int] = {
    "INTERNAL_ERROR": 1,
    PluginError.code: 1,
    ConfigError.code: 2,
    HealthCheckFailed.code: 3,
    BackupFailed.code: 4,
    ApprovalRequired.code: 5,
    MigrationFailed.code: 6,
    Locked.code: 7,
    RestoreFailed.code: 8,
    LintBlocked.code: 9,
    StagingProofMissing.code: 10,
    PreflightBlocked.code: 11,
    Interrupted.code: 130,
}


def exit_code_for(code: str) -> int:
    return EXIT_CODES.get(code, 1)


def validation_problems(error: ValidationError, root: str, model: type[BaseModel]) -> list[str]:
    """One ``dotted.path: message`` line per problem pydantic found validating ``model``, with a
    suggestion for a misspelt key, for the first ``MAX_REPORTED_PROBLEMS`` of them and how many
    more (as for the config: a 1 MiB request of unknown keys took seconds to describe and answered
    with 6 MB); ``root`` names the document itself."""
    from faber_core.config import MAX_REPORTED_PROBLEMS
    from faber_core.suggest import did_you_mean, known_fields

    def hint(problem: Any) -> str:
        if problem["type"] != "extra_forbidden":
            return ""
        return did_you_mean(str(problem["loc"][-1]), known_fields(model, problem["loc"][:-1]))

    errors = error.errors(include_url=False, include_input=False)
    problems = [
        f"{'.'.join(str(part) for part in problem['loc']) or root}: {problem['msg']}{hint(problem)}"
        for problem in errors[:MAX_REPORTED_PROBLEMS]
    ]
    if len(errors) > MAX_REPORTED_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_REPORTED_PROBLEMS} more problems")
    return problems
