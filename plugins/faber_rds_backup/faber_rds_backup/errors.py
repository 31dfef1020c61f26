"""AWS failures while backing up, as faber errors with the spec's wording and what to do next."""

from __future__ import annotations

from faber_core.context import RunContext
from faber_core.errors import BackupFailed, FaberError
from faber_core.support.backups import creation_failed

from faber_rds_backup import leftovers
from faber_rds_backup.aws import (
    ACCESS_DENIED,
    BAD_CREDENTIALS,
    NOT_FOUND,
    QUOTA_EXCEEDED,
    THROTTLED,
    AwsFailure,
    aws_cli,
    aws_failure,
)
from faber_rds_backup.settings import RdsBackupSettings
from faber_rds_backup.targets import Target
from faber_rds_backup.waiting import WaitTimedOut


def backup_failed(
    context: RunContext,
    settings: RdsBackupSettings,
    exc: Exception,
    operation: str = "create",
    target: Target | None = None,
) -> Exception:
    """The error to raise for ``exc``; anything that is not an AWS failure passes through unchanged.

    With ``target``, a missing instance or cluster is looked for under the name a rollback stopped
    between its two renames gave it."""
    if isinstance(exc, FaberError):
        return exc
    failure = aws_failure(exc)
    if failure is None:
        return exc
    backup_error, suggestions = explain(context, settings, failure)
    moved = leftovers.find_moved_original(target) if target is not None and failure.code in NOT_FOUND else None
    if moved is not None:
        where, commands = leftovers.describe(target, moved)
        backup_error = f"{backup_error}: {leftovers.OriginalMoved(moved)}"
        suggestions = [where, *commands]
    message = creation_failed(context) if operation == "create" else f"Failed to {operation} RDS snapshots"
    return BackupFailed(
        message,
        result={"backup_error": backup_error, "aws_error": context.redactor.redact(failure.summary)},
        suggestions=suggestions,
    )


def left_behind(context: RunContext, target: Target, left: leftovers.LeftBehind) -> BackupFailed:
    """A backup refused because a stopped rollback left something to decide about first."""
    where, commands = left.describe(target)
    return BackupFailed(
        creation_failed(context),
        result={"backup_error": str(left), "restored_identifier": left.restored},
        suggestions=[where, *commands],
    )


def explain(context: RunContext, settings: RdsBackupSettings, failure: AwsFailure) -> tuple[str, list[str]]:
    """What went wrong in one line, and the suggestions for it (a deploy's fallbacks, such as
    ``--skip-backup``, are faber's to add)."""
    env = context.environment
    if failure.code in ACCESS_DENIED:
        return "Insufficient AWS permissions for RDS snapshot", [
            "Verify AWS credentials have RDS snapshot permissions (the IAM policy in docs/rds-backup.md)",
        ]
    if failure.code in BAD_CREDENTIALS or failure.code in ("NoCredentials", "NoCredentialsError"):
        return "AWS credentials are missing, expired or invalid", [
            "Provide credentials through the standard AWS chain (AWS_PROFILE, aws sso login, an instance or task role)",
            "Check them with: aws sts get-caller-identity",
        ]
    if failure.code in NOT_FOUND:
        noun = "DB cluster" if settings.is_cluster else "DB instance"
        listing = "describe-db-clusters" if settings.is_cluster else "describe-db-instances"
        return f"RDS {noun} {settings.target_identifier} not found in {settings.region}", [
            f"Check backup.{'db_cluster_identifier' if settings.is_cluster else 'db_instance_identifier'} "
            f"and backup.region for {env}",
            f"List what exists: {aws_cli(settings, listing, '--query', 'DB*[].*Identifier')}",
        ]
    if failure.code in QUOTA_EXCEEDED:
        listing = "describe-db-cluster-snapshots" if settings.is_cluster else "describe-db-snapshots"
        return f"RDS manual snapshot quota reached in {settings.region}", [
            f"Set backup.retention (keep_last, max_age_days) so faber prunes its old snapshots of {env}",
            f"Delete manual snapshots you no longer need: {aws_cli(settings, listing, '--snapshot-type', 'manual')}",
            "Or ask AWS for a higher 'Manual DB instance snapshots' quota in Service Quotas",
        ]
    if failure.code in THROTTLED:
        return f"AWS throttled the RDS API (retried {settings.max_attempts} times with backoff)", [
            "Retry in a few minutes",
            'Or allow more retries: backup.max_attempts, or backup.retry_mode "adaptive"',
        ]
    return f"AWS error {failure.code}: {context.redactor.redact(failure.message)}", [
        f"Check the RDS {('DB cluster' if settings.is_cluster else 'DB instance')} {settings.target_identifier} "
        f"in {settings.region}",
    ]


def wait_failed(context: RunContext, target: Target, snapshot_id: str, exc: Exception) -> BackupFailed:
    follow = target.snapshot_describe_command(snapshot_id)
    if isinstance(exc, WaitTimedOut):
        backup_error = (
            f"Timed out after {target.settings.wait_timeout_seconds:g}s waiting for snapshot {snapshot_id} "
            f"to become available (last status: {exc.last_status})"
        )
        suggestions = [
            f"The snapshot goes on in AWS; follow it with: {follow}",
            f"Allow longer: backup.wait_timeout_seconds (now {target.settings.wait_timeout_seconds:g})",
        ]
    else:
        backup_error = str(exc)
        # The same command, whichever it was: a deploy adds the spec's fallbacks (--skip-backup,
        # faber backup ENV) after these itself.
        suggestions = [f"Inspect it with: {follow}", "Find out why it failed, then run the same command again"]
    return BackupFailed(
        creation_failed(context),
        result={"backup_error": backup_error, "snapshot_id": snapshot_id},
        suggestions=suggestions,
        backup_id=snapshot_id,
    )
