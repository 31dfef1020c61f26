"""The base of faber's own models: the data crossing the hook boundary and the result documents."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DeferredModel(BaseModel):
    """A pydantic model whose validator and serializer are built on its first use, not when its
    module is imported: a command builds only the models it uses, and before its first query only
    those it needs by then (start-up, docs/performance.md)."""

    model_config = ConfigDict(defer_build=True)
