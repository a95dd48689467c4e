"""The README's Python examples run as written (in order, in one namespace, in a temp dir)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 4


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)
def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for number, block in enumerate(python_blocks()):
        code = compile(block, f"README.md python block {number}", "exec")
        exec(code, namespace)
    printed = capsys.readouterr().out
    assert "step 5000" in printed
    assert (tmp_path / "build" / "mlp_train.h").exists()
