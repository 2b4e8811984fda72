"""The public surface is exactly __all__, and shows the package as the home of its names."""

from __future__ import annotations

import types
from pathlib import Path

import ollama_orchestra
import ollama_orchestra.sim


class TestPublicApi:
    def test_all_names_exist(self) -> None:
        """Every name in __all__ is importable from the package."""
        for module in (ollama_orchestra, ollama_orchestra.sim):
            for name in module.__all__:
                assert hasattr(module, name), f"{module.__name__}.{name}"

    def test_nothing_public_outside_all(self) -> None:
        """No public attribute exists that __all__ does not list (modules aside)."""
        for module in (ollama_orchestra, ollama_orchestra.sim):
            public = {
                n
                for n, v in vars(module).items()
                if not n.startswith("_")
                and not isinstance(v, types.ModuleType)
                and n != "annotations"
            }
            assert public == set(module.__all__) - {"__version__"}, module.__name__

    def test_classes_belong_to_the_package(self) -> None:
        """Tracebacks and reprs say ollama_orchestra.X, never ollama_orchestra._private.X."""
        for name in ollama_orchestra.__all__:
            obj = getattr(ollama_orchestra, name)
            if isinstance(obj, type):
                assert obj.__module__ == "ollama_orchestra", name

    def test_typed_marker_shipped(self) -> None:
        """The package ships py.typed."""
        assert (Path(ollama_orchestra.__file__).parent / "py.typed").is_file()
