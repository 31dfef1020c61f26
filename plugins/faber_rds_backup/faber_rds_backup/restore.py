"""Roll an environment back to one of faber's snapshots.

RDS cannot restore a snapshot into an existing instance, so faber restores it to a new instance
(or Aurora cluster) beside the original and waits for it. Then, in ``swap`` mode, it renames the
original to ``<id>-pre-rollback-<ts>`` and the restored copy to the original's identifier: the
endpoint the application uses (derived from the identifier) now serves the restored data, and the
old database stays available for inspection. In ``side-by-side`` mode it stops after the
restore and reports the new endpoint.

faber's lock is checked right before the first rename (``context.restore_committing``): lost (its
session ended), the restore stops there, the original unchanged, the restored copy named. The
renames themselves take minutes and cannot be made conditional on the lock: once the first one is
asked, a lock lost is only reported afterwards (docs/rds-backup.md).

Each step is reported as it finishes. When one fails, :class:`RestoreFailed` says exactly where
things stand and gives the ``aws rds`` commands that finish or undo the swap by hand. When SIGINT
or SIGTERM stops it, the interrupted outcome says the same, and whether the swap (the commit of
this restore) had happened: before the first rename the original still serves its database, once
the restored copy answers to the original's identifier it serves the backup, and in between
neither does until the swap is finished or undone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faber_core import events
from faber_core.context import RunContext
from faber_core.errors import FaberError, LockLost, RestoreFailed
from faber_core.models import BackupRecord, RestoreOutcome

from faber_rds_backup import leftovers, naming, snapshots
from faber_rds_backup.aws import NOT_FOUND, aws_failure
from faber_rds_backup.errors import explain
from faber_rds_backup.settings import RdsBackupSettings
from faber_rds_backup.targets import Target
from faber_rds_backup.waiting import WaitFailed, WaitTimedOut, wait_until_available


@dataclass
class Plan:
    """The identifiers of one restore, and what has been done so far."""

    backup_id: str
    original: str
    restored: str
    previous: str
    state: Callable[[Target, Plan], tuple[str, list[str]]]
    """Where things stand while the current step runs (one of the functions at the end)."""
    steps: list[str] = field(default_factory=list)


def restore(context: RunContext, backup: BackupRecord) -> RestoreOutcome:
    settings, target = snapshots.open_target(context)
    now = dt.datetime.now(dt.timezone.utc)
    plan = Plan(
        backup_id=backup.id,
        original=target.identifier,
        restored=naming.restored_identifier(target.identifier, now),
        previous=naming.pre_rollback_identifier(target.identifier, now),
        state=_unchanged,
    )
    run = _Runner(context, settings, target, plan)
    try:
        return _swap(run, settings, target, plan)
    except KeyboardInterrupt as interrupt:
        where, commands = plan.state(target, plan)
        return RestoreOutcome.interrupted(
            plan.backup_id,
            interrupt,
            committed=_COMMITTED[plan.state],
            details=where,
            steps=plan.steps,
            # What to do about the copy the stopped restore leaves: a plain retry refuses while it exists.
            suggestions=commands,
            provider_data={"commands": commands},
        )


def _swap(run: _Runner, settings: RdsBackupSettings, target: Target, plan: Plan) -> RestoreOutcome:
    original = run.step(
        "checked the snapshot and the current database", _unchanged, lambda: _prepare(run.context, target, plan)
    )
    run.step(
        f"started restoring {plan.backup_id} to new {target.noun} {plan.restored}",
        _restore_requested,
        lambda: target.restore(
            plan.backup_id, plan.restored, original, _restored_tags(original, plan, settings.restore_mode)
        ),
    )
    run.step(f"{plan.restored} is available", _restored_beside, lambda: run.wait_serving(plan.restored))
    if settings.restore_mode == "side-by-side":
        return _side_by_side(target, plan)
    run.step(f"{plan.original} is ready to be renamed", _restored_beside, lambda: run.wait(plan.original))
    _lock_still_held(run.context, target, plan)
    run.step(
        f"renamed {plan.original} to {plan.previous}",
        _restored_beside,
        lambda: target.rename(plan.original, plan.previous),
        unanswered=_rename_requested,
    )
    run.step(f"{plan.previous} is available", _original_moved, lambda: run.wait(plan.previous))
    run.step(
        f"renamed {plan.restored} to {plan.original}",
        _original_moved,
        lambda: target.rename(plan.restored, plan.original),
        unanswered=_swap_requested,
    )
    run.step(f"{plan.original} serves the restored data", _swapped_pending, lambda: run.wait_serving(plan.original))
    return RestoreOutcome(
        backup_id=plan.backup_id,
        status="success",
        details=f"{plan.original} now serves snapshot {plan.backup_id}; the previous database is kept as "
        f"{plan.previous}",
        steps=plan.steps,
        endpoint=target.endpoint(plan.original),
        provider_data={
            "mode": "swap",
            "snapshot_id": plan.backup_id,
            target.kind: plan.original,
            "previous_" + target.kind: plan.previous,
            "cleanup": f"When satisfied, delete the previous database: {target.delete_command(plan.previous)}",
        },
    )


def _lock_still_held(context: RunContext, target: Target, plan: Plan) -> None:
    """faber's lock, checked right before the first rename (this restore's commit point): lost,
    the original is unchanged and still serves the database, and the restored copy, left beside
    it, is named in the error with what to do with it."""
    try:
        context.restore_committing()
    except LockLost as lost:
        left = f"{plan.restored}, restored from {plan.backup_id}, is left beside it"
        lost.message += f"; {left}"
        lost.args = (lost.message,)
        lost.suggestions += [
            f"Remove the copy: {target.delete_command(plan.restored)}",
            f"Or, once no other run is active, swap it in: {target.rename_command(plan.original, plan.previous)}, "
            f"then, once {plan.previous} is available: {target.rename_command(plan.restored, plan.original)}",
        ]
        lost.result["provider_data"] = {"mode": "swap", "restored_" + target.kind: plan.restored}
        raise


def _prepare(context: RunContext, target: Target, plan: Plan) -> dict[str, Any]:
    snapshot = snapshots.find(context, target, plan.backup_id)
    if snapshot.status != "available":
        raise RestoreFailed(
            f"Snapshot {plan.backup_id} is {snapshot.status}, not available",
            suggestions=[f"Wait for it, or pick another: faber backups {context.environment}"],
        )
    try:
        original = target.describe()
    except Exception as exc:
        failure = aws_failure(exc)
        moved = leftovers.find_moved_original(target) if failure is not None and failure.code in NOT_FOUND else None
        if moved is None:
            raise
        raise leftovers.OriginalMoved(moved) from None
    # A second copy would be billed too, and two leave the person finishing by hand to guess.
    leftovers.refuse_copies_beside(target)
    return original


def _restored_tags(original: dict[str, Any], plan: Plan, mode: str) -> dict[str, str]:
    # Keys under aws: belong to AWS and cannot be set by anyone else; the swap tag is this restore's own.
    tags = {
        item["Key"]: item.get("Value", "")
        for item in original.get("TagList") or []
        if not item["Key"].startswith("aws:") and item["Key"] != leftovers.SWAP_INTO_TAG
    }
    swap = {leftovers.SWAP_INTO_TAG: plan.original} if mode == "swap" else {}
    return {**tags, leftovers.RESTORED_FROM_TAG: plan.backup_id, **swap}


def _side_by_side(target: Target, plan: Plan) -> RestoreOutcome:
    endpoint = target.endpoint(plan.restored)
    return RestoreOutcome(
        backup_id=plan.backup_id,
        status="success",
        details=f"Restored {plan.backup_id} to {target.noun} {plan.restored} at {endpoint}; "
        f"{plan.original} is unchanged. Point the application at the new endpoint to use it.",
        steps=plan.steps,
        original_unchanged=True,
        endpoint=endpoint,
        provider_data={
            "mode": "side-by-side",
            "snapshot_id": plan.backup_id,
            "restored_" + target.kind: plan.restored,
            "swap_commands": _swap_commands(target, plan),
        },
    )


class _Runner:
    """Runs the restore's steps in order, reporting each; a failing step raises RestoreFailed."""

    def __init__(self, context: RunContext, settings: RdsBackupSettings, target: Target, plan: Plan) -> None:
        self.context = context
        self.settings = settings
        self.target = target
        self.plan = plan

    def step(
        self,
        done: str,
        state: Callable[[Target, Plan], tuple[str, list[str]]],
        action: Callable[[], Any],
        *,
        unanswered: Callable[[Target, Plan], tuple[str, list[str]]] | None = None,
    ) -> Any:
        """Run ``action``; where things stand if it fails is ``state``, and if an interrupt stops
        faber before AWS answered it, ``unanswered`` (a request AWS may have carried out) or ``state``."""
        self.plan.state = unanswered or state
        try:
            result = action()
        except Exception as exc:
            reason = self._reason(exc)
            # What a killed rollback left is the story, not this run's state.
            left = exc if isinstance(exc, leftovers.LeftBehind) else None
            where, commands = left.describe(self.target) if left else state(self.target, self.plan)
            self.context.emit(events.BACKUP_RESTORE_STEP, step=done, status="failed", error=reason)
            raise RestoreFailed(
                f"Restore of {self.plan.backup_id} stopped before: {done}. {reason}",
                result={
                    "steps_completed": self.plan.steps,
                    "failed_step": done,
                    "state": where,
                    "restored_identifier": left.restored if left else self.plan.restored,
                    "previous_identifier": left.previous if left else self.plan.previous,
                },
                suggestions=[where, *commands],
                backup_id=self.plan.backup_id,
            ) from None
        self.plan.steps.append(done)
        self.context.emit(events.BACKUP_RESTORE_STEP, step=done, status="done")
        return result

    def _reason(self, exc: Exception) -> str:
        if isinstance(exc, FaberError):
            return exc.message
        if isinstance(exc, WaitTimedOut | WaitFailed | leftovers.LeftBehind):
            return str(exc)
        failure = aws_failure(exc)
        if failure is None:
            raise exc
        summary, _ = explain(self.context, self.settings, failure)
        return f"{summary} ({self.context.redactor.redact(failure.summary)})"

    def wait(self, identifier: str) -> None:
        wait_until_available(
            self.context,
            identifier,
            lambda: (self._status(identifier, self.target.status), None),
            timeout_seconds=self.settings.wait_timeout_seconds,
            poll_interval_seconds=self.settings.poll_interval_seconds,
            event=events.BACKUP_PROGRESS,
        )

    def wait_serving(self, identifier: str) -> None:
        """Wait for ``identifier`` and, for a cluster, every instance in it."""
        self.wait(identifier)
        for member in self.target.members(identifier):
            wait_until_available(
                self.context,
                member,
                lambda member=member: (self._status(member, self.target.member_status), None),
                timeout_seconds=self.settings.wait_timeout_seconds,
                poll_interval_seconds=self.settings.poll_interval_seconds,
                event=events.BACKUP_PROGRESS,
            )

    @staticmethod
    def _status(identifier: str, read: Callable[[str], str]) -> str:
        # Right after a rename, RDS may not answer to the new name yet.
        try:
            return read(identifier)
        except Exception as exc:
            failure = aws_failure(exc)
            if failure is not None and failure.code in NOT_FOUND:
                return "not-found-yet"
            raise


# Where a failed restore leaves things, and the commands that take it from there --------------


def _unchanged(target: Target, plan: Plan) -> tuple[str, list[str]]:
    return (
        f"Nothing was changed: {plan.original} still serves the database.",
        [
            f"Restore by hand: {_restore_command(target, plan)}",
        ],
    )


def _restore_requested(target: Target, plan: Plan) -> tuple[str, list[str]]:
    # The request may have reached AWS even when its answer did not (an interrupt, a lost connection).
    return (
        f"{plan.original} is unchanged and still serves the database; the restore of {plan.backup_id} to "
        f"{plan.restored} was requested, so {plan.restored} may exist beside it.",
        [
            f"Check whether it does: {target.describe_command(plan.restored)}",
            f"If it does, remove it: {target.delete_command(plan.restored)}",
        ],
    )


def _restored_beside(target: Target, plan: Plan) -> tuple[str, list[str]]:
    return (
        f"{plan.original} is unchanged and still serves the database; {plan.restored} is being restored from "
        f"{plan.backup_id} beside it.",
        [
            f"Watch it until its status is available: {target.describe_command(plan.restored)}",
            *_swap_commands(target, plan),
            f"Or give up and remove the copy: {target.delete_command(plan.restored)}",
        ],
    )


def _rename_requested(target: Target, plan: Plan) -> tuple[str, list[str]]:
    # As for the restore's request: AWS may have renamed it though its answer never came.
    moved, commands = _original_moved(target, plan)
    return (
        f"The rename of {plan.original} to {plan.previous} was requested, so it may have happened. If it did not, "
        f"{plan.original} is unchanged and still serves the database, {plan.restored} restored beside it; if it "
        f"did: {moved}",
        [
            f"Check which: {target.describe_command(plan.original)} (not found: it was renamed)",
            *commands,
            f"If it was not renamed, remove the copy: {target.delete_command(plan.restored)}",
        ],
    )


def _swap_requested(target: Target, plan: Plan) -> tuple[str, list[str]]:
    moved, commands = _original_moved(target, plan)
    return (
        f"The rename of {plan.restored} to {plan.original} was requested, so it may have happened. If it did, "
        f"{plan.original} serves snapshot {plan.backup_id} and the previous database is {plan.previous}; if it "
        f"did not: {moved}",
        [
            f"Check which: {target.describe_command(plan.restored)} (not found: it was renamed)",
            *commands,
            f"If it was renamed, once satisfied, delete the previous database: {target.delete_command(plan.previous)}",
        ],
    )


def _original_moved(target: Target, plan: Plan) -> tuple[str, list[str]]:
    return leftovers.describe(target, leftovers.MovedOriginal(plan.original, plan.previous, plan.restored))


def _swapped_pending(target: Target, plan: Plan) -> tuple[str, list[str]]:
    return (
        f"{plan.restored} was renamed to {plan.original} and is still coming up; the previous database is "
        f"{plan.previous}.",
        [
            f"Watch it until its status is available: {target.describe_command(plan.original)}",
            f"When satisfied, delete the previous database: {target.delete_command(plan.previous)}",
        ],
    )


def _swap_commands(target: Target, plan: Plan) -> list[str]:
    return [
        f"Swap it in: {target.rename_command(plan.original, plan.previous)}",
        f"then, once {plan.previous} is available: {target.rename_command(plan.restored, plan.original)}",
    ]


def _restore_command(target: Target, plan: Plan) -> str:
    if target.kind == "cluster":
        return target.cli(
            "restore-db-cluster-from-snapshot",
            "--db-cluster-identifier",
            plan.restored,
            "--snapshot-identifier",
            plan.backup_id,
            "--engine",
            "<engine of " + plan.original + ">",
        )
    return target.cli(
        "restore-db-instance-from-db-snapshot",
        "--db-instance-identifier",
        plan.restored,
        "--db-snapshot-identifier",
        plan.backup_id,
    )


# Whether the swap, this restore's commit, had happened, by where things stand.
_COMMITTED: dict[Callable[[Target, Plan], tuple[str, list[str]]], bool | None] = {
    _unchanged: False,
    _restore_requested: False,
    _restored_beside: False,
    _rename_requested: None,
    _original_moved: None,
    _swap_requested: None,
    _swapped_pending: True,
}
