""" "Did you mean ...?" for a misspelt name, from the names that would have been accepted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel


def closest(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The candidate most like ``word``, if one is alike enough (``cutoff``) to be what was meant."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean X?)`` or an empty string."""
    match = closest(word, candidates, cutoff)
    return f" (did you mean {match}?)" if match else ""


def known_fields(model: type[BaseModel], location: Sequence[Any]) -> list[str]:
    """The field names accepted at ``location`` (a path of keys from ``model``, as in a pydantic
    error's ``loc``), to suggest from when a key there is unknown; none past a non-model field."""
    parent: Any = model
    for part in location:
        field = parent.model_fields.get(str(part)) if isinstance(parent, type) else None
        parent = field.annotation if field is not None else None
    return list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
