"""Dependencies point one way: plugin -> core. The core imports no plugin; plugins use only public core names.

Read from the source (AST), so an import hidden inside a function counts as much as one at the
top of a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGES = Path(__file__).resolve().parents[2] / "packages"
CORE = PACKAGES / "llamatelemetry-core" / "src" / "llamatelemetry"
PLUGIN_SOURCES = sorted(p for p in PACKAGES.glob("llamatelemetry-*/src/llamatelemetry_*") if p.is_dir())


def _imports(path: Path) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """Every absolute import in ``path``: (line, module, names imported from it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, tuple(alias.name for alias in node.names)


def _plugin_package(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top.startswith("llamatelemetry_") else None


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text("def f():\n"
                      "    from llamatelemetry_llamacpp.client import LlamaCppClient\n"
                      "    import llamatelemetry_nccl\n")
    found = [(module, names) for _, module, names in _imports(source)]
    assert found == [("llamatelemetry_llamacpp.client", ("LlamaCppClient",)), ("llamatelemetry_nccl", ())]


def test_plugin_sources_are_found() -> None:
    names = {path.name for path in PLUGIN_SOURCES}
    assert {"llamatelemetry_llamacpp", "llamatelemetry_transformers", "llamatelemetry_nccl"} <= names


def test_the_core_imports_no_plugin_package() -> None:
    offenders = [
        f"{path.relative_to(PACKAGES)}:{line} imports {module}"
        for path in sorted(CORE.rglob("*.py"))
        for line, module, _ in _imports(path)
        if _plugin_package(module)
    ]
    assert not offenders, "the core must not import plugins (dependencies point plugin -> core):\n" + "\n".join(
        offenders)


@pytest.mark.parametrize("package", PLUGIN_SOURCES, ids=lambda p: p.name)
def test_plugins_use_only_public_core_names(package: Path) -> None:
    offenders: list[str] = []
    for path in sorted(package.rglob("*.py")):
        for line, module, names in _imports(path):
            where = f"{path.relative_to(PACKAGES)}:{line}"
            parts = module.split(".")
            if parts[0] == "llamatelemetry":
                private = [part for part in parts[1:] if part.startswith("_")]
                private += [name for name in names if name.startswith("_")]
                if private:
                    offenders.append(f"{where} uses the core's private {module} {', '.join(private)}")
            other = _plugin_package(module)
            if other is not None and other != package.name:
                hidden = [part for part in parts[1:] if part.startswith("_")]
                hidden += [name for name in names if name.startswith("_")]
                if hidden:
                    offenders.append(f"{where} uses {other}'s private {', '.join(hidden)}")
    assert not offenders, "\n".join(offenders)
