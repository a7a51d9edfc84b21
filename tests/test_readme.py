"""The README's quickstart runs as written."""

import csv
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sklearn_metarefine.__main__ import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def _shell_blocks():
    return re.findall(r"```shell\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_two_setup_commands():
    commands = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(commands) == 2
    assert "metarefine benchmark" in commands[0]
    assert "pytest" in commands[1]


@pytest.mark.slow
def test_readme_quickstart_runs(capsys):
    (quickstart,) = _python_blocks()
    assert len(quickstart.strip().splitlines()) <= 12
    exec(compile(quickstart, str(README), "exec"), {})  # noqa: S102 (our own README)
    printed = capsys.readouterr().out
    auroc = float(re.search(r"test AUROC: ([0-9.]+)", printed).group(1))
    assert auroc > 0.8
    assert re.search(r"removed \d+ of \d+ planted anomalies", printed)


def _write_images(folder, n_images, n_defective, seed):
    rng = np.random.RandomState(seed)
    for i in range(n_images):
        pixels = 90 + rng.randint(0, 40, (64, 64, 3))
        if i >= n_images - n_defective:
            pixels[20:44, 20:44] = [250, 30, 30]
        # Half of them in a subfolder, as a real collection would be.
        path = folder / ("batch2" if i % 2 else "") / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.mark.slow
def test_readme_own_images_commands_run(tmp_path, monkeypatch):
    (block,) = _shell_blocks()
    commands = [shlex.split(line) for line in block.strip().splitlines()]
    assert [command[:2] for command in commands] == [
        [".venv/bin/metarefine", "fit"],
        [".venv/bin/metarefine", "score"],
    ]
    monkeypatch.chdir(tmp_path)
    _write_images(tmp_path / "images" / "good", 40, 3, seed=0)
    _write_images(tmp_path / "images" / "new", 10, 5, seed=1)
    for command in commands:
        assert main(command[1:] + ["--no-progress"]) == 0

    assert Path("line3.metarefine").is_file() and Path("line3.dropped.png").is_file()
    with open("line3.dropped.csv", newline="") as file:
        dropped = [row["path"] for row in csv.DictReader(file)]
    # The refinement dropped every defective training image.
    assert {"img037.png", "img038.png", "img039.png"} <= {Path(p).name for p in dropped}
    with open("results.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 10
    scores = {Path(row["path"]).name: float(row["anomaly_score"]) for row in rows}
    good = [scores[f"img{i:03d}.png"] for i in range(5)]
    defective = [scores[f"img{i:03d}.png"] for i in range(5, 10)]
    assert min(defective) > max(good)
    assert {row["label"] for row in rows} <= {"normal", "anomalous"}
