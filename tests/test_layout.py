"""The import rules of the layout (README "Layout", ``DESIGN.md``), read from the source.

* ``sentio/`` is the domain library: it never imports Prefect, ``tasks`` or ``flows``. The
  one exception is the CLI, which imports the flows lazily (inside the commands that run
  or serve them), so that ``import sentio.cli`` does not pay for Prefect.
* ``tasks/`` are thin Prefect tasks around the library: never ``flows``.
* ``flows/`` chain tasks: they import Prefect, the tasks, other flows and the
  configuration / orchestration helpers of the library, nothing else of it.

Imports are collected with ``ast`` from every module, including imports inside
functions, so a lazy import cannot hide a broken rule.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY_FOR_FLOWS = {"sentio.config", "sentio.orchestration", "sentio.errors"}
"""The parts of the library a flow may use: settings, Prefect environment, errors."""
THIRD_PARTY_FOR_FLOWS = {"prefect", "prefect_dask", "dask", "distributed", "httpx"}
"""prefect_dask / dask / distributed: the training fan-out on a Dask cluster (its task
runner, worker resources, the cluster's configuration); httpx: the local server helper polls the Prefect API's health endpoint."""
ORCHESTRATION = ("prefect", "prefect_dask", "dask", "distributed", "tasks")
"""What the library never imports."""


def imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """``(module, line, at module level)`` of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "__future__":
                continue
            for alias in node.names:
                # `from sentio import stages` imports the module sentio.stages
                yield f"{node.module}.{alias.name}", node.lineno, id(node) in top_level


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def root(module: str) -> str:
    return module.split(".")[0]


def test_the_rules_see_every_package() -> None:
    assert len(sources("sentio")) > 40 and sources("tasks") and sources("flows")
    # the checker finds a nested import (a broken rule cannot hide in a function)
    found = list(imports(REPO / "sentio" / "cli.py"))
    assert any(root(m) == "flows" and not top for m, _, top in found)


@pytest.mark.parametrize("path", sources("sentio"), ids=lambda p: str(p.relative_to(REPO)))
def test_the_library_never_imports_prefect_tasks_or_flows(path: Path) -> None:
    for module, line, top in imports(path):
        where = f"{path.relative_to(REPO)}:{line} imports {module}"
        assert root(module) not in ORCHESTRATION, where
        if root(module) == "flows":
            # the stated exception: the CLI's commands import the flows they run, lazily
            assert path.name == "cli.py" and path.parent.name == "sentio" and not top, where


@pytest.mark.parametrize("path", sources("tasks"), ids=lambda p: str(p.relative_to(REPO)))
def test_tasks_never_import_flows(path: Path) -> None:
    for module, line, _ in imports(path):
        assert root(module) != "flows", f"{path.relative_to(REPO)}:{line} imports {module}"


@pytest.mark.parametrize("path", sources("flows"), ids=lambda p: str(p.relative_to(REPO)))
def test_flows_import_prefect_tasks_and_the_orchestration_helpers_only(path: Path) -> None:
    for module, line, _ in imports(path):
        where = f"{path.relative_to(REPO)}:{line} imports {module}"
        top = root(module)
        if top in sys.stdlib_module_names or top in ("tasks", "flows"):
            continue
        if top == "sentio":
            assert any(
                module == allowed or module.startswith(allowed + ".")
                for allowed in LIBRARY_FOR_FLOWS
            ), where
            continue
        assert top in THIRD_PARTY_FOR_FLOWS, where
