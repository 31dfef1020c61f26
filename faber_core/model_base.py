"""The base of faber's own models: the data crossing the hook boundary and the result documents."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DeferredModel(BaseModel):
    """A pydantic model whose validator and serializer are built on its first use, not when its
    module is imported: a command builds only the models it uses, and before its first query only
    those it needs by then (start-up, docs/performance.md)."""

    model_config = ConfigDict(defer_build=True)


def build_deferred_models() -> None:
    """Build every deferred model of faber's now.

    pydantic builds a deferred model on its first use without a lock: threads using one for the
    first time at once can find it half built ("'MockValSer' object is not an instance of
    'SchemaSerializer'"). A fleet calls this before its targets' threads start."""
    import faber_core.models
    import faber_core.results
    import faber_core.safety.models  # noqa: F401  (the modules that define them)

    pending = list(DeferredModel.__subclasses__())
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        if not model.__pydantic_complete__:
            model.model_rebuild(force=True)
