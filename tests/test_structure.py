"""The package's layout: no import circle, torch only where used, short modules."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import sklearn_metarefine

PACKAGE_DIR = Path(sklearn_metarefine.__file__).parent
MAX_MODULE_LINES = 600


def _module_name(path):
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imported(module, path, modules):
    """The package's modules that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {name for name in found if name in modules and name != module}


def _import_graph():
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def _find_cycle(graph):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child) :] + [child]
            if child not in state:
                cycle = visit(child, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_the_import_walk_sees_relative_and_lazy_imports():
    graph = _import_graph()
    assert "sklearn_metarefine._scores" in graph["sklearn_metarefine._refine"]
    # the default estimator is imported inside a function
    assert "sklearn_metarefine._flows" in graph["sklearn_metarefine._refine"]
    assert "sklearn_metarefine._flows._detector" in graph["sklearn_metarefine._flows"]


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_among_the_package_modules():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_is_longer_than_the_limit(module):
    n_lines = len(_modules()[module].read_text(encoding="utf-8").splitlines())
    assert n_lines <= MAX_MODULE_LINES, f"{module} has {n_lines} lines"


def _python(code):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )


def test_refining_a_sklearn_detector_does_not_import_torch():
    code = (
        "import sys\n"
        "from sklearn_metarefine import IQRRefiner, iqr_fence, neighbour_distances\n"
        "from sklearn.ensemble import IsolationForest\n"
        "import numpy as np\n"
        "X = np.random.RandomState(0).normal(size=(40, 3))\n"
        "IQRRefiner(IsolationForest(random_state=0), random_state=0).fit(X)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'skorch' not in sys.modules, 'skorch was imported'\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr


def test_the_command_line_checks_its_arguments_without_importing_torch():
    code = (
        "import sys\n"
        "from sklearn_metarefine.__main__ import main\n"
        "assert main(['benchmark', '--noise', '0.9', '--output', 'x']) == 1\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "noise level 0.9" in result.stderr


def test_public_names_load_on_first_use():
    code = (
        "import sys, sklearn_metarefine\n"
        "assert 'torch' not in sys.modules\n"
        "assert sorted(dir(sklearn_metarefine)) == sorted(set(dir(sklearn_metarefine)))\n"
        "from sklearn_metarefine import FlowDetector\n"
        "assert 'torch' in sys.modules\n"
        "assert sklearn_metarefine.FlowDetector is FlowDetector\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr


def test_every_public_name_is_exported_and_an_unknown_one_is_an_attribute_error():
    for name in sklearn_metarefine.__all__:
        assert getattr(sklearn_metarefine, name).__name__ == name
        assert name in dir(sklearn_metarefine)
    # dir() lists what the module holds too, not only the lazy names
    for name in ("__version__", "__all__", "__name__"):
        assert name in dir(sklearn_metarefine)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchDetector'"):
        sklearn_metarefine.NoSuchDetector


BENCHMARK_SCRIPTS = sorted((PACKAGE_DIR.parent / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCHMARK_SCRIPTS, ids=lambda path: path.stem)
def test_benchmark_scripts_import_what_exists(script, monkeypatch):
    # A script that imports a private name the package no longer has fails
    # only when someone runs it; importing it (its main() does not run) shows
    # that here. Run as a script, its folder is on the path (its neighbours
    # import from each other).
    monkeypatch.syspath_prepend(str(script.parent))
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main)
