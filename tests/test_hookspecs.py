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


def test_a_plugin_that_fails_to_import_is_skipped_with_a_warning(tmp_path, run_faber):
    package = tmp_path / "faber_broken-0.1.dist-info"
    package.mkdir()
    (package / "METADATA").write_text("Metadata-Version: 2.1\nName: faber-broken\nVersion: 0.1\n")
    (package / "entry_points.txt").write_text("[faber]\nbroken = faber_broken_plugin\n")
    (tmp_path / "faber_broken_plugin.py").write_text("raise RuntimeError('bad plugin setup')\n")

    run = run_faber("plugins", "--json", env={"PYTHONPATH": str(tmp_path)})

    assert run.returncode == 0, run.output
    assert "faber plugin 'broken' (faber-broken) failed to load and was skipped: RuntimeError: bad plugin setup" in (
        run.stderr
    )
    assert "pg_dump" in run.stdout
