"""faber: deploy database migrations safely across environments."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("faber")
"""Marker for plugin hook implementations: ``@hookimpl def faber_migration_tools(): ...``."""

__all__ = ["__version__", "hookimpl"]
