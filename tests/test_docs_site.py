"""The documentation site builds with ``mkdocs build --strict``: every page in the nav, every link
and anchor resolves, and the hook and model references render from the code's docstrings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_site_builds_strictly_with_the_hook_and_model_references(tmp_path):
    run = build(ROOT / "mkdocs.yml", tmp_path / "site")

    assert run.returncode == 0, run.stdout + run.stderr
    hooks = (tmp_path / "site/reference/hooks/index.html").read_text()
    assert "faber_migration_apply" in hooks and "Apply <code>pending</code> in order" in hooks
    assert "MigrationState" in (tmp_path / "site/reference/models/index.html").read_text()


def test_a_dead_link_fails_the_build(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    with (docs / "plugins.md").open("a") as page:
        page.write("\nThe diagram is in [hooks](hooks.md).\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: {docs}\n")

    run = build(config, tmp_path / "site")

    assert run.returncode != 0
    assert "'hooks.md', but the target is not found" in run.stdout + run.stderr
