"""The documentation builds with warnings as errors and runs its gallery.

The build is the same as ``python -m sphinx -W --keep-going -b html docs OUT``:
every example under ``examples/`` is executed, and a warning (a broken
cross-reference, a malformed docstring, an example that raises) fails it.
"""

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"

pytest.importorskip(
    "sphinx_gallery", reason="the docs extra is not installed: pip install -e '.[docs]'"
)


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    # sphinx-gallery skips examples whose output it already has: start from
    # nothing, so that every example runs in this build.
    for generated in ("auto_examples", "gen_modules"):
        shutil.rmtree(DOCS / generated, ignore_errors=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-q",
            str(DOCS),
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return out, result


@pytest.mark.slow
def test_docs_build_without_warnings(built_docs):
    out, result = built_docs
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert (out / "index.html").is_file()


@pytest.mark.slow
def test_every_example_runs_and_draws(built_docs):
    out, result = built_docs
    assert result.returncode == 0, result.stderr[-5000:]
    examples = sorted(EXAMPLES.glob("plot_*.py"))
    assert len(examples) >= 5
    images = DOCS / "auto_examples" / "images"
    for example in examples:
        drawn = list(images.glob(f"sphx_glr_{example.stem}_*.png"))
        assert drawn, f"{example.name} drew no figure"
        assert (out / "auto_examples" / f"{example.stem}.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", ["sklearn_metarefine", "sklearn_metarefine.datasets"]
)
def test_api_reference_covers_every_public_name(built_docs, module):
    out, result = built_docs
    assert result.returncode == 0, result.stderr[-5000:]
    public = importlib.import_module(module).__all__
    missing = [
        name
        for name in public
        if not (out / "gen_modules" / f"{module}.{name}.html").is_file()
    ]
    assert not missing, f"no API page for {missing}"
