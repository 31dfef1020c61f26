"""Create, list and prune faber's snapshots of one environment's RDS instance or Aurora cluster.

A snapshot is faber's when it carries ``created-by=faber`` and ``faber:environment=<env>``;
retention never touches any other. The applied migrations at backup time do not fit in RDS tags
(256 characters a value), so they live in a manifest beside pg_dump's, ``.faber/backups/<env>/
<snapshot id>.json``; the snapshot itself is the source of truth for status and size.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from faber_core import events
from faber_core.context import RunContext
from faber_core.errors import BackupFailed, Interrupted
from faber_core.models import BackupRecord, BackupStatus
from faber_core.support import backups

from faber_rds_backup import leftovers, naming
from faber_rds_backup.aws import ALREADY_EXISTS, aws_failure, rds_client
from faber_rds_backup.errors import backup_failed, left_behind, wait_failed
from faber_rds_backup.settings import PROVIDER, RdsBackupSettings, load_settings
from faber_rds_backup.targets import Snapshot, Target, target_for
from faber_rds_backup.waiting import WaitFailed, WaitTimedOut, wait_until_available

CREATED_BY = "created-by"
ENVIRONMENT_TAG = "faber:environment"
REASON_TAG = "faber:reason"
DEPLOY_ID_TAG = "faber:deploy-id"
_GIB = 1024**3
# Snapshot states RDS passes through on the way to available (the others: deleting, failed, ...).
_IN_PROGRESS = {"creating", "copying", "modifying", "upgrading", "pending"}
_TAG_VALUE_LIMIT = 256
_MAX_NAME_ATTEMPTS = 5


def open_target(context: RunContext) -> tuple[RdsBackupSettings, Target]:
    settings = load_settings(context)
    return settings, target_for(rds_client(context, settings), settings)


def manifest_dir(context: RunContext) -> Path:
    return context.state_dir / "backups" / context.environment


def _tag_value(text: str) -> str:
    """RDS tag values allow letters, digits, spaces and ``_.:/=+-@``; anything else becomes ``-``."""
    return re.sub(r"[^\w\s.:/=+\-@]", "-", text)[:_TAG_VALUE_LIMIT]


def faber_tags(context: RunContext, reason: str) -> dict[str, str]:
    return {
        CREATED_BY: "faber",
        ENVIRONMENT_TAG: _tag_value(context.environment),
        REASON_TAG: _tag_value(reason),
        DEPLOY_ID_TAG: _tag_value(context.run_id),
    }


def is_fabers(snapshot: Snapshot, environment: str) -> bool:
    return snapshot.tags.get(CREATED_BY) == "faber" and snapshot.tags.get(ENVIRONMENT_TAG) == _tag_value(environment)


def create(context: RunContext, reason: str, migrations: list[tuple[str, str | None]]) -> BackupRecord:
    settings, target = open_target(context)
    now = dt.datetime.now(dt.timezone.utc)
    asked: list[str] = []
    try:
        # A deploy beside a stopped rollback's copy would be undone by whoever finishes that rollback.
        leftovers.refuse_copies_beside(target)
        snapshot_id = _start_snapshot(context, target, now, reason, asked)
    except leftovers.CopyLeftBeside as left:
        raise left_behind(context, target, left) from None
    except Exception as exc:
        raise backup_failed(context, settings, exc, target=target) from None
    except KeyboardInterrupt as interrupt:
        if not asked:
            raise  # before the request: nothing was asked of AWS
        raise snapshot_requested_interrupted(context, target, asked[-1], interrupt) from None
    try:
        context.emit(events.BACKUP_PROGRESS, target=snapshot_id, status="creating", source=target.identifier)
        wait_until_available(
            context,
            snapshot_id,
            lambda: _progress(target.snapshot(snapshot_id)),
            timeout_seconds=settings.wait_timeout_seconds,
            poll_interval_seconds=settings.poll_interval_seconds,
            event=events.BACKUP_PROGRESS,
        )
        snapshot = target.snapshot(snapshot_id)
    except (WaitTimedOut, WaitFailed) as exc:
        raise wait_failed(context, target, snapshot_id, exc) from None
    except Exception as exc:
        raise backup_failed(context, settings, exc) from None
    except KeyboardInterrupt as interrupt:
        raise snapshot_interrupted(context, target, snapshot_id, interrupt) from None
    record = _record(context, target, snapshot, reason, migrations)
    _write_manifest(context, record)
    prune(context, settings, target)
    return record


def snapshot_interrupted(
    context: RunContext, target: Target, snapshot_id: str, interrupt: KeyboardInterrupt
) -> Interrupted:
    """A signal stopped faber's wait, not AWS: the snapshot goes on being made, and billed.

    RDS deletes only an available snapshot, so faber cannot take it back; it names it instead.
    Without the manifest (written once the snapshot is available) faber cannot roll back to it.
    """
    return Interrupted.by(
        interrupt,
        f"while RDS was making snapshot {snapshot_id} of {target.identifier}; the snapshot goes on in AWS (and is "
        "billed), but faber wrote no manifest for it, so faber cannot roll back to it",
        result={"snapshot_id": snapshot_id, "snapshot_exists": True, "source_identifier": target.identifier},
        suggestions=[
            f"Follow it until its status is available: {target.snapshot_describe_command(snapshot_id)}",
            f"Then delete it: {target.snapshot_delete_command(snapshot_id)}",
            f"Take a backup faber can roll back to: faber backup {context.environment}",
        ],
    )


def snapshot_requested_interrupted(
    context: RunContext, target: Target, snapshot_id: str, interrupt: KeyboardInterrupt
) -> Interrupted:
    """A signal stopped faber while it waited for RDS's answer to its request for ``snapshot_id``.

    The request may have reached AWS and the snapshot been created with its answer lost, or not:
    faber chose the identifier before asking, so it names it as one that may exist, with the
    commands that tell and that delete it.
    """
    return Interrupted.by(
        interrupt,
        f"while asking RDS for snapshot {snapshot_id} of {target.identifier}; the request may have reached AWS "
        "before the signal, so the snapshot may exist (and be billed) or not. If it does, faber wrote no manifest "
        "for it, so faber cannot roll back to it",
        result={"snapshot_id": snapshot_id, "snapshot_exists": None, "source_identifier": target.identifier},
        suggestions=[
            f"Check whether it exists (SnapshotNotFound means it was never made): "
            f"{target.snapshot_describe_command(snapshot_id)}",
            f"If it does, once its status is available, delete it: {target.snapshot_delete_command(snapshot_id)}",
            f"Take a backup faber can roll back to: faber backup {context.environment}",
        ],
    )


def _start_snapshot(context: RunContext, target: Target, now: dt.datetime, reason: str, asked: list[str]) -> str:
    """Ask RDS for the snapshot; a second backup within the same second takes the next free name.

    Each identifier is appended to ``asked`` before its request is sent, so a signal that stops
    faber while it waits for the answer can name the snapshot the request may have created.
    """
    tags = faber_tags(context, reason)
    taken = _identifiers_taken(target)
    for attempt in range(1, _MAX_NAME_ATTEMPTS + 1):
        snapshot_id = naming.snapshot_identifier(context.environment, now, attempt)
        if snapshot_id in taken and attempt < _MAX_NAME_ATTEMPTS:
            continue
        asked.append(snapshot_id)
        try:
            target.create_snapshot(snapshot_id, tags)
            return snapshot_id
        except Exception as exc:
            if attempt == _MAX_NAME_ATTEMPTS or not _name_taken(exc):
                raise
    raise AssertionError("unreachable")  # the last attempt returned or raised


def _identifiers_taken(target: Target) -> set[str]:
    """The target's manual snapshots' identifiers, skipped before asking: a backup within the same
    second as the last (a deploy right after another) would otherwise ask first for the earlier
    backup's name, and a signal while RDS has not answered would name that backup as the one that
    may exist, with the command that deletes it. Unreadable, none are skipped: RDS's answer to a
    name taken still moves on to the next."""
    try:
        return {snapshot.id for snapshot in target.snapshots()}
    except Exception:
        return set()


def _name_taken(exc: Exception) -> bool:
    failure = aws_failure(exc)
    return failure is not None and failure.code in ALREADY_EXISTS


def _progress(snapshot: Snapshot) -> tuple[str, int | None]:
    return snapshot.status, snapshot.percent_progress


def _record(
    context: RunContext,
    target: Target,
    snapshot: Snapshot,
    reason: str,
    migrations: list[tuple[str, str | None]],
) -> BackupRecord:
    status = _backup_status(snapshot.status)
    return BackupRecord(
        id=snapshot.id,
        provider=PROVIDER,
        environment=context.environment,
        created_at=snapshot.created_at,
        reason=reason,
        status=status,
        problem=f"the snapshot is {snapshot.status}" if status == "unusable" else None,
        size_bytes=snapshot.size_gib * _GIB if snapshot.size_gib is not None else None,
        location=f"rds:{target.kind}-snapshot:{target.settings.region}:{snapshot.id}",
        database=context.database.name,
        migrations=migrations,
        provider_data={
            "snapshot_status": snapshot.status,
            "source_identifier": target.identifier,
            "source_kind": target.kind,
            "region": target.settings.region,
            "deploy_id": snapshot.tags.get(DEPLOY_ID_TAG),
            "allocated_storage_gib": snapshot.size_gib,
        },
    )


def _backup_status(snapshot_status: str) -> BackupStatus:
    """RDS's snapshot status as faber's: usable once available, in progress while RDS makes it."""
    if snapshot_status == "available":
        return "available"
    return "in_progress" if snapshot_status in _IN_PROGRESS else "unusable"


def _write_manifest(context: RunContext, record: BackupRecord) -> None:
    """The record as faber reads it back: every value unmasked but the reason, as in faber's own
    manifests (a password ``...@2026`` masked the year of its ``created_at``: unreadable)."""
    directory = backups.private_backup_dir(context)
    written = record.model_copy(update={"reason": context.redactor.redact(record.reason)})
    backups.write_manifest(directory / f"{record.id}.json", written.model_dump_json(indent=2) + "\n")


def _read_manifest(context: RunContext, snapshot_id: str) -> BackupRecord | None:
    """The manifest's record; None when there is none or it cannot be read (reported as an event)."""
    path = manifest_dir(context) / f"{snapshot_id}.json"
    if not path.is_file():
        return None
    try:
        return BackupRecord.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        context.emit(events.BACKUP_MANIFEST_UNREADABLE, backup_id=snapshot_id, problem=str(exc).splitlines()[0])
        return None


def list_backups(context: RunContext) -> list[BackupRecord]:
    settings, target = open_target(context)
    try:
        snapshots = [s for s in target.snapshots() if is_fabers(s, context.environment)]
    except Exception as exc:
        raise backup_failed(context, settings, exc, operation="list") from None
    records = []
    for snapshot in sorted(snapshots, key=lambda s: s.created_at, reverse=True):
        manifest = _read_manifest(context, snapshot.id)
        record = _record(
            context, target, snapshot, snapshot.tags.get(REASON_TAG, ""), manifest.migrations if manifest else []
        )
        record.provider_data["manifest"] = manifest is not None
        if manifest is None and record.status == "available":
            # A restore swaps the instance, then checks its migrations against the manifest's: without
            # them it cannot be checked, and would be reported failed after the swap.
            shown = (manifest_dir(context) / f"{snapshot.id}.json").relative_to(context.project_dir)
            record.status = "unusable"
            # No machine has it when the run that took the snapshot was killed while RDS made it.
            record.problem = (
                f"its manifest {shown} is missing or unreadable, so a restore of it cannot be verified; copy it "
                "from the machine that took the snapshot, or, if the faber run that took it was stopped before the "
                f"snapshot was available (it then wrote none), delete it: {target.snapshot_delete_command(snapshot.id)}"
            )
        records.append(record)
    return records


def prune(context: RunContext, settings: RdsBackupSettings, target: Target) -> list[str]:
    """Delete faber's snapshots of this environment that no retention rule keeps; never fails the backup."""
    if not settings.retention.enabled:
        return []
    try:
        doomed = expired(
            [s for s in target.snapshots() if is_fabers(s, context.environment)],
            settings,
            dt.datetime.now(dt.timezone.utc),
        )
        deleted = []
        for snapshot in doomed:
            target.delete_snapshot(snapshot.id)
            (manifest_dir(context) / f"{snapshot.id}.json").unlink(missing_ok=True)
            deleted.append(snapshot.id)
            context.emit(events.BACKUP_PRUNED, backup_id=snapshot.id, created_at=snapshot.created_at.isoformat())
        return deleted
    except Exception as exc:
        failure = aws_failure(exc)
        if failure is None:
            raise
        context.emit(events.BACKUP_PRUNE_FAILED, error=context.redactor.redact(failure.summary))
        return []


def expired(snapshots: list[Snapshot], settings: RdsBackupSettings, now: dt.datetime) -> list[Snapshot]:
    """The available snapshots beyond the newest ``keep_last`` and older than ``max_age_days``.

    A rule left unset keeps nothing by itself, so with only ``keep_last`` age does not matter and
    with only ``max_age_days`` the count does not.
    """
    retention = settings.retention
    newest_first = sorted((s for s in snapshots if s.status == "available"), key=lambda s: s.created_at, reverse=True)
    kept_by_count = set(s.id for s in newest_first[: retention.keep_last or 0])
    oldest_kept = now - dt.timedelta(days=retention.max_age_days) if retention.max_age_days else None
    return [
        s for s in newest_first if s.id not in kept_by_count and (oldest_kept is None or s.created_at < oldest_kept)
    ]


def find(context: RunContext, target: Target, backup_id: str) -> Snapshot:
    snapshot = target.snapshot(backup_id)
    if not is_fabers(snapshot, context.environment):
        raise BackupFailed(
            f"Snapshot {backup_id} was not made by faber for {context.environment}",
            suggestions=[f"List faber's snapshots: faber backups {context.environment}"],
        )
    return snapshot
