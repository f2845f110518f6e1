"""The test launcher's timeout really ends a launched tree whose children sit in sessions of their own (as
torchrun's workers do), so a hung distributed test fails instead of blocking the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from torchrun_launch import _children, kill_process_tree


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_process_tree_ends_children_in_their_own_session() -> None:
    child = "import time; time.sleep(120)"
    code = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 30
    while not _children(parent.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    children = _children(parent.pid)
    assert children, "the parent did not start its child"
    kill_process_tree(parent.pid)
    parent.communicate(timeout=30)  # the pipe closes: no process holds it any more
    time.sleep(0.2)
    assert not any(_alive(pid) for pid in children)
    assert os.path.isdir("/proc")
