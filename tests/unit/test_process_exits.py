"""A component that dies by itself is reported with the error its log ends with (what
`sagakit chaos` lists as a violation instead of silently waiting for the next kill)."""

from __future__ import annotations

from pathlib import Path

from sagakit._processes import Exit, last_error

RICH_TRACEBACK = """\
│ │ │ │ │ ❱  97 │   │   raise ValueError("delay must be a non-negative │ │ │ │ │
│ │ │ │ │       number")                                               │ │ │ │ │
│ │ │ │ ╰──────────────────────────────────────────────────────────────╯ │ │ │ │
│ │ │ │ ValueError: delay must be a non-negative number                  │ │ │ │
│ │ │ ╰──────────────────────────────────────────────────────────────────╯ │ │ │
│ ╰──────────────────────────────────────────────────────────────────────────╯ │
╰──────────────────────────────────────────────────────────────────────────────╯
ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)
"""

PLAIN_TRACEBACK = """\
Traceback (most recent call last):
  File "x.py", line 1, in <module>
    raise KeyError("k")
KeyError: 'k'
"""


def test_the_error_of_a_rich_traceback_is_found_under_its_groups(tmp_path: Path) -> None:
    log = tmp_path / "orchestrator-1.3.log"
    log.write_text(RICH_TRACEBACK)
    assert last_error(log) == "ValueError: delay must be a non-negative number"
    crash = Exit("orchestrator-1", 1, log, last_error(log))
    assert str(crash) == (
        f"orchestrator-1 exited by itself with status 1: "
        f"ValueError: delay must be a non-negative number ({log})"
    )


def test_a_plain_traceback_and_a_log_without_an_error(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text(PLAIN_TRACEBACK)
    assert last_error(log) == "KeyError: 'k'"
    log.write_text("INFO started\nINFO restored partition 3\n")
    assert last_error(log) == ""
    assert last_error(tmp_path / "missing.log") == ""
