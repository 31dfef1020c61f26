"""What a rollback killed between its two renames leaves: the original's identifier answers to nothing.

A swap renames the original to ``<id>-pre-rollback-<ts>`` and then the restored copy
``<id>-restored-<ts>`` to ``<id>``. SIGINT and SIGTERM between the two are reported by the run
itself; a SIGKILL (or a lost machine) is not, so the next run that finds ``<id>`` missing looks for
the renamed original and says how to finish or undo the swap, instead of calling the identifier
unknown or claiming nothing was changed.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from faber_rds_backup import naming
from faber_rds_backup.aws import aws_failure
from faber_rds_backup.targets import Target

_TIMESTAMP = re.compile(r"-(\d{8}-\d{6})$")


@dataclass(frozen=True)
class MovedOriginal:
    original: str
    previous: str
    """The original, renamed away by the swap."""
    restored: str | None
    """The copy meant to take the original's identifier; None when it no longer exists."""


class OriginalMoved(Exception):
    """The target's identifier is missing because a rollback was stopped between its two renames."""

    def __init__(self, moved: MovedOriginal) -> None:
        super().__init__(
            f"{moved.original} does not exist: a rollback was stopped between its two renames and left it as "
            f"{moved.previous}"
        )
        self.moved = moved


def find_moved_original(target: Target) -> MovedOriginal | None:
    """The newest ``<id>-pre-rollback-<ts>`` of the target, when ``<id>`` itself is missing.

    Completed rollbacks leave their ``-pre-rollback-`` databases too, for inspection; the newest is
    the one renamed last. None when there is none, or when the listing itself fails (the caller
    then reports the missing identifier as it would have).
    """
    try:
        existing = set(target.identifiers())
    except Exception as exc:
        if aws_failure(exc) is None:
            raise
        return None
    if target.identifier in existing:
        return None
    moved = []
    for name in existing:
        found = _TIMESTAMP.search(name)
        if found is None:
            continue
        when = dt.datetime.strptime(found.group(1), "%Y%m%d-%H%M%S")
        if name == naming.pre_rollback_identifier(target.identifier, when):
            moved.append((when, name))
    if not moved:
        return None
    when, previous = max(moved)
    restored = naming.restored_identifier(target.identifier, when)
    return MovedOriginal(target.identifier, previous, restored if restored in existing else None)


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
