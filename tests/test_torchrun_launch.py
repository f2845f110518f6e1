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


def test_a_hung_launch_fails_with_every_worker_stack(tmp_path) -> None:
    """A worker that never finishes: the failure names the timeout and shows where each rank was waiting."""
    import pytest

    from torchrun_launch import run_torchrun

    worker = tmp_path / "hang.py"
    worker.write_text("import time\n\ndef wait_forever():\n    time.sleep(600)\n\nwait_forever()\n")
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not finish in 20 s") as failure:
        run_torchrun([str(worker)], nproc=2, timeout=20)
    assert time.monotonic() - started < 60
    assert str(failure.value).count("in wait_forever") == 2, str(failure.value)[-3000:]
