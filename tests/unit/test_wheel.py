"""The wheel holds the library and nothing else: no sample app, no harness that would
collide with a user's own `services` or `bench` package in site-packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_contains_only_sagakit(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = tmp_path.glob("sagakit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"sagakit", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    # the CLI is a package, the harness and the scenario protocol are inside the library
    assert "sagakit/cli/__init__.py" in names
    assert "sagakit/_bench/run.py" in names
    assert "sagakit/scenario.py" in names
    assert "sagakit/py.typed" in names
