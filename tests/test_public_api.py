"""The in-repository plugins, the examples under examples/ and the sqlfiles handler, which authors
copy, use faber's public API only (faber_core.support says what it is), so the core's internals can
move without breaking a plugin."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ("faber_core", "faber_core.models", "faber_core.errors", "faber_core.context")
PUBLIC_PACKAGES = ("faber_core.support",)


def plugin_sources() -> list[Path]:
    packages = [path for path in [*ROOT.glob("plugins/*/faber_*"), *ROOT.glob("examples/*/faber_*")] if path.is_dir()]
    sources = [source for package in packages for source in package.rglob("*.py")]
    return [*sources, ROOT / "faber_core/testing/sqlfiles.py"]


def faber_imports(source: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, module) for line, module in found if module.split(".")[0] == "faber_core"]


def is_public(module: str) -> bool:
    return module in PUBLIC or any(module == p or module.startswith(p + ".") for p in PUBLIC_PACKAGES)


def test_plugins_import_only_the_public_api():
    sources = plugin_sources()
    assert len(sources) > 20  # every plugin's modules were found

    internal = [
        f"{source.relative_to(ROOT)}:{line}: {module}"
        for source in sources
        for line, module in faber_imports(source)
        if not is_public(module)
    ]

    assert internal == []

