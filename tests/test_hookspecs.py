"""The hookspecs are the plugin author's reference: every hook documented, the guide lists each."""

from __future__ import annotations

import inspect
from pathlib import Path

import pluggy
import pytest

from faber_core import hookspecs

HOOKS = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("faber_")]


def test_every_hook_has_a_docstring_saying_when_it_is_called():
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 60, name


def test_every_hook_is_in_the_plugin_guide():
    guide = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    missing = [name for name in HOOKS if f"`{name}`" not in guide]
    assert not missing


def test_a_misspelled_hook_implementation_is_rejected(plugin_manager):
    from faber_core import hookimpl

    class Typo:
        @hookimpl
        def faber_migration_stauts(self, tool, context):
            return None

    plugin_manager.register(Typo())

    with pytest.raises(pluggy.PluginValidationError, match="faber_migration_stauts"):
        plugin_manager.check_pending()
