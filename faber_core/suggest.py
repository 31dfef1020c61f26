""" "Did you mean ...?" for a misspelt name, from the names that would have been accepted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The candidate most like ``word``, if one is alike enough (``cutoff``) to be what was meant."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean X?)`` or an empty string."""
    match = closest(word, candidates, cutoff)
    return f" (did you mean {match}?)" if match else ""
