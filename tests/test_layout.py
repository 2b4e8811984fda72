"""The package's layout rules: no module imports another's private names; files stay short."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import ollama_orchestra

PACKAGE = Path(ollama_orchestra.__file__).parent
LIMIT = 500
#: A module over ``LIMIT`` lines must say why in its docstring, starting with this phrase.
MARKER = "Longer than 500 lines because"


def _modules() -> List[Tuple[str, Path]]:
    return sorted((p.relative_to(PACKAGE).as_posix(), p) for p in PACKAGE.rglob("*.py"))


def _private_imports(path: Path) -> List[str]:
    """``from ._x import _y`` (or ``from ollama_orchestra._x import _y``) with ``_y`` private."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if node.level == 0 and not module.startswith("ollama_orchestra"):
            continue
        for alias in node.names:
            if alias.name.startswith("_") and alias.name != "__version__":
                found.append(
                    f"line {node.lineno}: from {'.' * node.level}{module} import {alias.name}"
                )
    return found


def _too_long(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    if len(text.splitlines()) <= LIMIT:
        return False
    doc = ast.get_docstring(ast.parse(text)) or ""
    return MARKER not in doc


class TestPrivateImports:
    """No module imports another module's ``_private`` names."""

    def test_no_private_names_imported(self) -> None:
        """Every ``from ._x import name`` names a non-underscore name."""
        bad: Dict[str, List[str]] = {}
        for name, path in _modules():
            found = _private_imports(path)
            if found:
                bad[name] = found
        assert not bad, "import a non-underscore name of the owning module instead: " + repr(bad)

    def test_detects_a_private_import(self, tmp_path: Path) -> None:
        """The check sees a private name among public ones, relative or absolute."""
        sample = tmp_path / "m.py"
        sample.write_text(
            "from ._a import b, _c\nfrom ollama_orchestra._d import _e\n"
            "from ._version import __version__\nfrom typing import _T\n",
            encoding="utf-8",
        )
        assert _private_imports(sample) == [
            "line 1: from ._a import _c",
            "line 2: from ollama_orchestra._d import _e",
        ]


class TestFileLength:
    """No file in the package is over 500 lines without a reason in its docstring."""

    def test_short_or_explained(self) -> None:
        """Each module is at most 500 lines, or its docstring says why (MARKER)."""
        long: Set[str] = {name for name, path in _modules() if _too_long(path)}
        assert not long, f"split these, or explain with {MARKER!r} in the docstring: {long}"

    def test_marker_excuses_a_long_file(self, tmp_path: Path) -> None:
        """A long module passes with the marker in its docstring, and fails without."""
        body = "x = 1\n" * (LIMIT + 1)
        plain, explained = tmp_path / "plain.py", tmp_path / "explained.py"
        plain.write_text('"""A module."""\n' + body, encoding="utf-8")
        explained.write_text(f'"""A module. {MARKER} of its tables."""\n' + body, encoding="utf-8")
        assert _too_long(plain) and not _too_long(explained)
