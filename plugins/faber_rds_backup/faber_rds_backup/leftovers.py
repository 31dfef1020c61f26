"""What a rollback killed midway leaves in AWS, found by the next run and never changed by it.

A swap restores the snapshot to ``<id>-restored-<ts>``, renames the original to
``<id>-pre-rollback-<ts>`` and then the restored copy to ``<id>``. SIGINT and SIGTERM are
reported by the run itself; a SIGKILL (or a lost machine) is not, so the next run looks:

- ``<id>`` missing: the kill came between the two renames. The newest renamed original is found,
  and how to finish or undo the swap is said, instead of calling the identifier unknown or
  claiming nothing was changed.
- ``<id>`` there, with a copy beside it that a swap made (named ``<id>-restored-<ts>`` and tagged
  ``faber:swap-into=<id>``, which only a swap's copy carries: a side-by-side copy is the result
  of its rollback, not a leftover): the kill came before the first rename. The copy is billed,
  and swapping it in later would undo whatever was deployed since, so it is named with the
  commands to finish that rollback or remove the copy.

A rollback that finished keeps ``<id>-pre-rollback-<ts>`` on purpose: the database it swapped out,
with the writes made since the snapshot, for inspection. It is billed until someone deletes it,
and the rollback's result said so once; ``faber status`` lists it as kept (not as a killed run's
leftover) with the commands to inspect and delete it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from faber_core.context import RunContext
from faber_core.errors import BackupFailed
from faber_core.models import BackupLeftover

from faber_rds_backup import naming
from faber_rds_backup.aws import aws_failure, rds_client
from faber_rds_backup.settings import load_settings
from faber_rds_backup.targets import Listed, Target, target_for

RESTORED_FROM_TAG = "faber:restored-from"
SWAP_INTO_TAG = "faber:swap-into"
"""On the copy a swap restores: the identifier it is to take. Not copied from the original (a
copy swapped in earlier carries it), so a side-by-side restore's copy never has it."""

SURVEY_SECONDS = 5
"""How long ``faber status`` waits for RDS to connect, and to answer, before it says the check could not run."""

_TIMESTAMP = re.compile(r"-(\d{8}-\d{6})$")


def _made_at(name: str) -> dt.datetime | None:
    found = _TIMESTAMP.search(name)
    return dt.datetime.strptime(found.group(1), "%Y%m%d-%H%M%S") if found else None


@dataclass(frozen=True)
class MovedOriginal:
    original: str
    previous: str
    """The original, renamed away by the swap."""
    restored: str | None
    """The copy meant to take the original's identifier; None when it no longer exists."""


@dataclass(frozen=True)
class CopyBeside:
    original: str
    copy: str
    backup_id: str
    status: str
    previous: str
    """The name the swap would have given the original."""


class LeftBehind(Exception):
    """A killed rollback's leftover the run found: it stops and says where things stand."""

    restored: str | None
    previous: str | None

    def describe(self, target: Target) -> tuple[str, list[str]]:
        raise NotImplementedError


class OriginalMoved(LeftBehind):
    """The target's identifier is missing because a rollback was stopped between its two renames."""

    def __init__(self, moved: MovedOriginal) -> None:
        super().__init__(
            f"{moved.original} does not exist: a rollback was stopped between its two renames and left it as "
            f"{moved.previous}"
        )
        self.moved = moved
        self.restored = moved.restored
        self.previous = moved.previous

    def describe(self, target: Target) -> tuple[str, list[str]]:
        return describe(target, self.moved)


class CopyLeftBeside(LeftBehind):
    """A swap's restored copy exists beside the original: a rollback was stopped before its first rename."""

    def __init__(self, copy: CopyBeside) -> None:
        super().__init__(
            f"{copy.copy} exists beside {copy.original}: a rollback to {copy.backup_id} was stopped before its swap "
            "and left it"
        )
        self.copy = copy
        self.restored = copy.copy
        self.previous = None

    def describe(self, target: Target) -> tuple[str, list[str]]:
        return describe_copy(target, self.copy)


def find_moved_original(target: Target) -> MovedOriginal | None:
    """The newest ``<id>-pre-rollback-<ts>`` of the target, when ``<id>`` itself is missing.

    None when there is none, or when the listing itself fails (the caller then reports the
    missing identifier as it would have).
    """
    try:
        existing = target.existing()
    except Exception as exc:
        if aws_failure(exc) is None:
            raise
        return None
    return moved_original(target, existing)


def moved_original(target: Target, existing: dict[str, Listed]) -> MovedOriginal | None:
    """Completed rollbacks leave their ``-pre-rollback-`` databases too, for inspection; the newest
    is the one renamed last."""
    if target.identifier in existing:
        return None
    moved = []
    for name in existing:
        made_at = _made_at(name)
        if made_at is not None and name == naming.pre_rollback_identifier(target.identifier, made_at):
            moved.append((made_at, name))
    if not moved:
        return None
    made_at, previous = max(moved)
    restored = naming.restored_identifier(target.identifier, made_at)
    return MovedOriginal(target.identifier, previous, restored if restored in existing else None)


def copies_beside(target: Target, existing: dict[str, Listed]) -> list[CopyBeside]:
    """A swap's restored copies beside the original, oldest first; none while the original is
    missing (then :func:`moved_original` tells the story, the copy included)."""
    if target.identifier not in existing:
        return []
    copies = []
    for name, listed in sorted(existing.items()):
        made_at = _made_at(name)
        if (
            made_at is not None
            and name == naming.restored_identifier(target.identifier, made_at)
            and listed.tags.get(SWAP_INTO_TAG) == target.identifier
        ):
            copies.append(
                CopyBeside(
                    target.identifier,
                    name,
                    listed.tags.get(RESTORED_FROM_TAG, "?"),
                    listed.status,
                    naming.pre_rollback_identifier(target.identifier, made_at),
                )
            )
    return copies


@dataclass(frozen=True)
class KeptOriginal:
    original: str
    previous: str
    """A database a finished swap replaced, renamed ``<id>-pre-rollback-<ts>``."""
    made_at: dt.datetime
    status: str


def kept_originals(target: Target, existing: dict[str, Listed]) -> list[KeptOriginal]:
    """The ``-pre-rollback-`` databases of the target that finished swaps kept, oldest first; not the
    one a swap stopped between its renames left (:func:`moved_original`), which is not finished."""
    moved = moved_original(target, existing)
    kept = []
    for name, listed in existing.items():
        made_at = _made_at(name)
        if (
            made_at is not None
            and name == naming.pre_rollback_identifier(target.identifier, made_at)
            and (moved is None or name != moved.previous)
        ):
            kept.append(KeptOriginal(target.identifier, name, made_at, listed.status))
    return sorted(kept, key=lambda k: (k.made_at, k.previous))


def describe_kept(target: Target, kept: KeptOriginal) -> tuple[str, list[str]]:
    return (
        f"kept on purpose ({kept.status}): {kept.original} as it was when a rollback started at "
        f"{kept.made_at:%Y-%m-%d %H:%M:%S} UTC swapped a snapshot in, writes since that snapshot included, kept by "
        "that rollback for inspection; it is billed until you delete it.",
        [
            f"Inspect it: {target.describe_command(kept.previous)}",
            f"When satisfied, delete it: {target.delete_command(kept.previous)}",
        ],
    )


def refuse_copies_beside(target: Target) -> None:
    """Raise :class:`CopyLeftBeside` for the oldest copy a stopped swap left; a listing that fails raises."""
    copies = copies_beside(target, target.existing())
    if copies:
        raise CopyLeftBeside(copies[0])


def describe(target: Target, moved: MovedOriginal) -> tuple[str, list[str]]:
    """Where things stand between the two renames, and the commands that finish or undo the swap."""
    finish = (
        [f"Finish the swap: {target.rename_command(moved.restored, moved.original)}"]
        if moved.restored is not None
        else []
    )
    copy = f"The restored copy is {moved.restored}." if moved.restored is not None else "The restored copy is gone."
    return (
        f"{moved.original} was renamed to {moved.previous}; no database answers at {moved.original}'s endpoint "
        f"until the swap is finished or undone. {copy}",
        [
            f"Wait until {moved.previous} is available: {target.describe_command(moved.previous)}",
            *finish,
            f"Or undo it: {target.rename_command(moved.previous, moved.original)}",
        ],
    )


def describe_copy(target: Target, copy: CopyBeside) -> tuple[str, list[str]]:
    """A copy left before the swap: the original still serves; finish that rollback, or remove the copy."""
    return (
        f"{copy.original} is unchanged and still serves the database; {copy.copy} ({copy.status}) beside it is "
        f"snapshot {copy.backup_id}, restored by a rollback that was stopped before its swap. It is billed, and "
        f"swapping it in now would undo whatever was deployed since; faber leaves it until you decide.",
        [
            f"To finish that rollback (the database becomes {copy.backup_id}), once it is available: "
            f"{target.rename_command(copy.original, copy.previous)}",
            f"then, once {copy.previous} is available: {target.rename_command(copy.copy, copy.original)}",
            f"Or remove the copy: {target.delete_command(copy.copy)}",
        ],
    )


def survey(context: RunContext) -> list[BackupLeftover]:
    """For ``faber status``: what killed rollbacks left of the target, and the databases finished swaps
    kept, from one listing, tried once."""
    settings = load_settings(context)
    target = target_for(rds_client(context, settings, quick_seconds=SURVEY_SECONDS), settings)
    try:
        existing = target.existing()
    except Exception as exc:
        failure = aws_failure(exc)
        if failure is None:
            raise
        raise BackupFailed(
            f"could not list the RDS {target.noun}s in {settings.region}: {context.redactor.redact(failure.summary)}"
        ) from None
    moved = moved_original(target, existing)
    found = []
    if moved is not None:
        where, commands = describe(target, moved)
        found.append(BackupLeftover(name=moved.previous, details=where, commands=commands))
    for copy in copies_beside(target, existing):
        where, commands = describe_copy(target, copy)
        found.append(BackupLeftover(name=copy.copy, details=where, commands=commands))
    for kept in kept_originals(target, existing):
        where, commands = describe_kept(target, kept)
        found.append(BackupLeftover(name=kept.previous, details=where, commands=commands, kept=True))
    return found
