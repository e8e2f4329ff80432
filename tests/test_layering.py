"""The packages' layering, read from every module's imports (``ast``, no importing).

``book/`` is the seam ingest and its readers meet at; ``feeds/`` (ingest) and
``publish/`` (readers) never import each other, and only ``app/`` wires them. Every
import counts: at module level, inside functions, and under ``TYPE_CHECKING``. The
``marketcast`` client SDK must stay importable without the server: no module-level
import of the server's packages (a function may import them lazily).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "book": {"feeds", "publish", "app"},
    "feeds": {"publish", "app"},
    "publish": {"feeds", "app"},
}
SERVER_PACKAGES = {"app", "feeds", "book", "publish"}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(tree: ast.Module, path: Path, *, at_import_time: bool = False) -> Iterator[str]:
    """Top-level package of every absolute or relative import in ``tree``; with
    ``at_import_time``, only those that run when the module is imported (not inside a
    function body)."""
    for node in _executed(tree) if at_import_time else ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                yield node.module.partition(".")[0]
            else:  # relative: stays inside the module's own package
                yield path.relative_to(ROOT).parts[0]


def _executed(node: ast.AST) -> Iterator[ast.AST]:
    """``node`` and what it contains, except function bodies (run later, if ever)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _executed(child)


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_layering(package: str) -> None:
    found = modules(package)
    assert found, f"no modules in {package}/"
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in found
        for name in sorted(set(imported(parse(path), path)) & FORBIDDEN[package])
    ]
    assert wrong == []


def test_the_client_sdk_imports_no_server_package_at_import_time() -> None:
    found = modules("marketcast")
    assert found, "the client SDK package marketcast/ is missing"
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in found
        for name in sorted(set(imported(parse(path), path, at_import_time=True)) & SERVER_PACKAGES)
    ]
    assert wrong == []


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import feeds.runner\n"
        "if TYPE_CHECKING:\n"
        "    from publish.fanout import Fanout\n"
        "def f() -> None:\n"
        "    import app.cli\n"
    )
    path = ROOT / "book" / "example.py"  # never written: only names the package
    tree = ast.parse(source)
    assert set(imported(tree, path)) == {"typing", "feeds", "publish", "app"}
    assert set(imported(tree, path, at_import_time=True)) == {"typing", "feeds", "publish"}
