"""The names and comments of the databases faber creates beside a PostgreSQL target: a swap
restore's two (:mod:`faber_core.backup.swap`) and a preview's rehearsal copy
(:mod:`faber_core.postgres.rehearsal`).

Apart from the modules that create them, so that ``faber status``, which looks for the ones a
killed run left (:mod:`faber_core.postgres.leftovers`), imports neither the restore nor the
rehearsal (docs/performance.md).
"""

from __future__ import annotations

import hashlib

MARKER = "faber: "
"""How the comment of a database faber created for a swap begins: only those are dropped as leftovers."""
_NAME_ROOM = 40
"""Bytes of the target's name kept in the names of the two databases: PostgreSQL cuts a name at 63
bytes, which would give both the same name."""


def restoring_name(target: str) -> str:
    return f"{_base(target)}_faber_restoring"


def previous_name(target: str) -> str:
    return f"{_base(target)}_faber_previous"


def _base(target: str) -> str:
    encoded = target.encode()
    if len(encoded) <= _NAME_ROOM:
        return target
    # Cut on a character boundary: a multibyte character cut in two is dropped whole.
    head = encoded[: _NAME_ROOM - 9].decode(errors="ignore")
    return f"{head}_{hashlib.sha256(encoded).hexdigest()[:8]}"


def rehearsal_comment(target: str) -> str:
    """The comment on a rehearsal database of the database the server names ``target``: what ties
    a leftover one to it, whatever name a URL gives it."""
    return f"faber rehearsal of {target}: a throwaway copy, safe to drop"
