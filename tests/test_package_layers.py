"""The folder tree's promises: layers that only import downwards, no import cycles, and imports
without side effects (the quiet start-up belongs to the command line entry points only)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "features_cache", "classifiers", "bench")
ENTRY_POINTS = {"pipeline.cli", "pipeline.demo", "pipeline.demo_data", "pipeline.__main__"}


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports, at the top or inside functions (lazy imports count too)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = submodules if len(submodules) == len(node.names) else [node.module, *submodules]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def layer(module: str) -> str:
    """``pipeline.<subpackage>``, the pipeline's entry points, its shared base modules, or a top-level package."""
    parts = module.split(".")
    if module in ENTRY_POINTS:
        return "pipeline entry points"
    if parts[0] == "pipeline":
        return ".".join(parts[:2]) if len(parts) > 2 else "pipeline base"
    return parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([node, *component]))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_modules_or_layers():
    graph = import_graph()
    assert cycles(graph) == []
    layers: dict[str, set[str]] = {}
    for module, targets in graph.items():
        layers.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    for name in layers:
        layers[name].discard(name)
    assert cycles({name: layers.get(name, set()) for name in set(layers) | {t for ts in layers.values() for t in ts}}) == []


@pytest.mark.parametrize("package", ["classifiers", "features_cache"])
def test_the_libraries_import_nothing_of_the_tool(package):
    graph = import_graph()
    offending = {m: sorted(t for t in ts if t.split(".")[0] not in (package, "features_cache")) for m, ts in graph.items()
                 if m.split(".")[0] == package}
    assert {m: ts for m, ts in offending.items() if ts} == {}


def test_stage_one_and_two_never_import_the_pages_or_serving():
    graph = import_graph()
    for module, targets in graph.items():
        if layer(module) in ("pipeline.extraction", "pipeline.training", "pipeline.health", "pipeline base"):
            assert not {layer(t) for t in targets} & {"pipeline.analysis", "pipeline.serving", "pipeline.commands", "bench"}, module


def test_benchmarks_are_not_in_the_installed_package():
    assert not list((REPO / "pipeline").rglob("*bench*.py"))
    assert (REPO / "bench" / "throughput.py").is_file()


PROBE = """
import json, os, sys
before_env, before_finders = dict(os.environ), list(sys.meta_path)
import classifiers, features_cache
from classifiers import get_head
get_head("logreg")
import pipeline.extraction.extract, pipeline.training.train, pipeline.analysis.audit, pipeline.analysis.report
keras_imported = "keras" in sys.modules
import pipeline.serving.predict  # serving builds Keras models: Keras, but still no hooks of ours
print(json.dumps({
    "env_changed": sorted(k for k in set(os.environ) | set(before_env) if os.environ.get(k) != before_env.get(k)),
    "our_finders": [type(f).__name__ for f in sys.meta_path if type(f).__module__.startswith("pipeline")],
    "keras_imported": keras_imported,
}))
"""


def test_importing_the_packages_has_no_side_effects():
    """A notebook that imports heads, the cache or any stage gets no environment changes and no import
    hooks of ours, and no Keras until a Keras head or serving is used."""
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts == {"env_changed": [], "our_finders": [], "keras_imported": False}
