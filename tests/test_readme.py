"""The README's quickstart runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


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
