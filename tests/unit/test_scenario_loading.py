"""A scenario is checked when it is loaded: what it lacks is said before a run, not after."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = """
from sagakit import App, Command, MemoryStore, Reply, Scenario, Service

class Poke(Command, type="bare.Poke"):
    pass

class Poked(Reply, type="bare.Poked"):
    pass

bare = Service("bare", MemoryStore())

@bare.handles(Poke)
def poke(cmd, ctx):
    return Poked()

class Bare(Scenario):
    app = App("bare", services=[bare])
    def starts(self, count, *, seed, run, first=0):
        return []

scenario = Bare()
"""


def test_a_scenario_without_check_is_refused_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "bare.py").write_text(SCENARIO)
    (tmp_path / "full.py").write_text(
        "from bare import Bare\n\n"
        "class Full(Bare):\n    def check(self, world, starts):\n        return []\n\n"
        "scenario = Full()\n"
    )
    from sagakit._loader import LoadError, load_scenario
    from sagakit.testing import isolated_registry

    with isolated_registry():
        with pytest.raises(LoadError, match=r"Bare defines no check\(world, starts\)"):
            load_scenario("bare:scenario", directory=tmp_path)
        assert type(load_scenario("full:scenario", directory=tmp_path)).__name__ == "Full"
    for name in ("bare", "full"):
        sys.modules.pop(name, None)


def test_the_cli_says_so_before_starting_anything(tmp_path: Path) -> None:
    (tmp_path / "bare2.py").write_text(SCENARIO)
    sagakit = Path(sys.executable).parent / "sagakit"
    run = subprocess.run(
        [str(sagakit), "demo", "bare2:scenario", "--app-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "defines no check(world, starts)" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
