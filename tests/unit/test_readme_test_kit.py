"""The README's shop and its tests, run as a newcomer runs them: copied out of the README
into a directory of their own and run by pytest, which loads sagakit's plugin by itself
(no conftest, no marker, no fixture of theirs). A README example that stopped working,
or a plugin that stopped loading, fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_tests_of_the_readme_shop_pass_in_a_directory_of_their_own(
    tmp_path: Path,
) -> None:
    blocks = python_blocks()
    shop = next(b for b in blocks if 'App("shop"' in b)
    tests = next(b for b in blocks if b.startswith("# test_shop.py"))
    (tmp_path / "shop.py").write_text(shop)
    (tmp_path / "test_shop.py").write_text(tests)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shop.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b3 passed\b", done.stdout), done.stdout
    # the tests' stores were in memory: nothing written next to the app
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["shop.py", "test_shop.py"]
