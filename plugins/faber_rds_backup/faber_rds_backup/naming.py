"""RDS identifiers faber makes up: snapshots, restored copies, the original kept after a swap.

RDS accepts letters, digits and hyphens, starting with a letter, without two hyphens in a row
or one at the end; DB instances and clusters up to 63 characters, snapshots up to 255.
"""

from __future__ import annotations

import datetime as dt
import re

INSTANCE_LIMIT = 63
SNAPSHOT_LIMIT = 255


def _clean(text: str) -> str:
    hyphenated = re.sub(r"[^a-z0-9]+", "-", text.lower())
    return re.sub(r"-{2,}", "-", hyphenated).strip("-")


def identifier(*parts: str, limit: int) -> str:
    """Join ``parts`` into a valid identifier; the first part gives way when it is too long."""
    head, *tail = [_clean(part) for part in parts]
    suffix = "-".join(p for p in tail if p)
    room = limit - (len(suffix) + 1 if suffix else 0)
    head = head[:room].rstrip("-")
    name = f"{head}-{suffix}" if suffix else head
    return name if name[:1].isalpha() else f"x{name}"[:limit].rstrip("-")


def timestamp(now: dt.datetime) -> str:
    return f"{now:%Y%m%d-%H%M%S}"


def snapshot_identifier(environment: str, now: dt.datetime, attempt: int = 1) -> str:
    """``faber-<env>-<YYYYMMDD-HHMMSS>``, with ``-<n>`` when that second is already taken."""
    extra = [str(attempt)] if attempt > 1 else []
    return identifier("faber", environment, timestamp(now), *extra, limit=SNAPSHOT_LIMIT)


def restored_identifier(original: str, now: dt.datetime) -> str:
    return identifier(original, "restored", timestamp(now), limit=INSTANCE_LIMIT)


def pre_rollback_identifier(original: str, now: dt.datetime) -> str:
    return identifier(original, "pre-rollback", timestamp(now), limit=INSTANCE_LIMIT)
