"""Build a C program against objects graphc exported and run it: the AOT tests' one way.

`build_and_run(tmp_path, source, objects, libraries)` writes `source` as main.c in `tmp_path`,
compiles it with gcc (C11, -Wall -Werror) and the objects, runs it there, and returns what it
printed; a compile error fails the test with gcc's message.
"""

from __future__ import annotations

import shutil
import subprocess

GCC = shutil.which("gcc")
CFLAGS = ["-O1", "-Wall", "-Werror", "-std=c11"]


def build_and_run(tmp_path, source: str, objects, libraries=("-lm",)) -> str:
    (tmp_path / "main.c").write_text(source)
    command = [GCC, *CFLAGS, f"-I{tmp_path}", "-o", "main", "main.c", *map(str, objects)]
    built = subprocess.run([*command, *libraries], cwd=tmp_path, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return subprocess.run(
        ["./main"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
