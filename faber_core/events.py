"""Every kind of event faber emits, as constants; docs/events.md says when each is emitted and
with what data.

A plugin emits with ``context.emit(kind, **data)``: the data must serialise to JSON, and is
redacted before any listener sees it. Handlers report each migration through
``context.start_migration`` and ``context.migration_applied``, which emit :data:`MIGRATION_STARTED`
and :data:`MIGRATION_APPLIED`; backup providers :data:`BACKUP_PROGRESS`; any plugin may emit
:data:`PROGRESS` for a long step of its own, and kinds of its own, named ``<plugin>.<what>``:
those are recorded like every event (audit log, ``faber_audit_event``, span events) and shown
as a plain line in the progress output.
"""

from __future__ import annotations

# A run and its steps
RUN_STARTED = "run.started"
RUN_FINISHED = "run.finished"
STEP_STARTED = "step.started"
STEP_FINISHED = "step.finished"
DATABASE_CONNECTING = "database.connecting"
LOCK_ACQUIRED = "lock.acquired"
LOCK_WAITING_FOR_MIGRATION_SESSION = "lock.waiting_for_migration_session"
HEALTH_FINISHED = "health.finished"
HEALTH_SESSION_LOST = "health.session_lost"
STATUS_READ = "status.read"
PREVIEW_READY = "preview.ready"
APPROVAL_GRANTED = "approval.granted"
PROGRESS = "progress"
COMMIT_CHECK_SKIPPED = "commit_check.skipped"

# Safety checks (docs/safety.md)
LINT_REHEARSING = "lint.rehearsing"
LINT_NOT_RUN = "lint.not_run"
LINT_FINISHED = "lint.finished"
STAGING_PROOF_PASSED = "staging_proof.passed"
STAGING_PROOF_SKIPPED = "staging_proof.skipped"
PREFLIGHT_WAITING = "preflight.waiting"
PREFLIGHT_FINISHED = "preflight.finished"
REHEARSAL_CREATED = "rehearsal.created"
REHEARSAL_DROPPED = "rehearsal.dropped"
REHEARSAL_DROP_FAILED = "rehearsal.drop_failed"
REHEARSAL_MEASURED = "rehearsal.measured"
REHEARSAL_LEFTOVER_DROPPED = "rehearsal.leftover_dropped"
REHEARSAL_LEFTOVER_DROP_FAILED = "rehearsal.leftover_drop_failed"

# Backups
BACKUP_STARTED = "backup.started"
BACKUP_PROGRESS = "backup.progress"
BACKUP_CREATED = "backup.created"
BACKUP_SKIPPED = "backup.skipped"
BACKUP_BASELINE_FAILED = "backup.baseline_failed"
BACKUP_LEFTOVERS_REMOVED = "backup.leftovers_removed"
BACKUP_MANIFEST_UNREADABLE = "backup.manifest_unreadable"
BACKUP_PRUNED = "backup.pruned"
BACKUP_PRUNE_FAILED = "backup.prune_failed"
BACKUP_RESTORE_STEP = "backup.restore_step"

# Applying migrations
APPLY_ESTIMATED = "apply.estimated"
APPLY_STARTED = "apply.started"
DEV_FALLBACK = "dev.fallback"
MIGRATION_STARTED = "migration.started"
MIGRATION_APPLIED = "migration.applied"
MIGRATION_FAILED = "migration.failed"
MIGRATION_RETRY = "migration.retry"
MIGRATION_RETRY_REFUSED = "migration.retry_refused"
MIGRATION_RESOLVED = "migration.resolved"
VERIFY_PASSED = "verify.passed"

# Rollback
ROLLBACK_SKIPPED = "rollback.skipped"
ROLLBACK_WITHHELD = "rollback.withheld"
ROLLBACK_STARTED = "rollback.started"
ROLLBACK_FINISHED = "rollback.finished"
MYSQLDUMP_RESTORE_FINISHED = "mysqldump.restore_finished"
WRITES_WAITING = "writes.waiting"
WRITES_CHECKED = "writes.checked"
WRITES_SESSIONS_ENDED = "writes.sessions_ended"

KINDS = frozenset(value for name, value in list(globals().items()) if name.isupper() and isinstance(value, str))
"""Every kind above: anything else is a plugin's own kind."""
