"""Launching ``torchrun`` from a test: CPU workers (one thread each), a clean launcher environment, and a
timeout that ends torchrun and every worker at once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

#: Launcher variables of an enclosing launch, which the new torchrun must not inherit.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")


def run_torchrun(args: list[str], *, nproc: int = 2, timeout: float = 300) -> str:
    """``python -m torch.distributed.run --standalone --nproc-per-node=NPROC ARGS``; its output (stdout and
    stderr). Fails the test, with the end of the output, on a non-zero exit or after ``timeout`` seconds."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a SIGABRT on timeout makes every process print its Python stacks
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone", *args]
    # Own session, so a hang can be ended for torchrun and its workers at once.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Ask every process for its stacks first (faulthandler on SIGABRT), so a hang says where it is. The
        # launcher is stopped first: it would end the other workers as soon as the first one dies.
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGSTOP)
        signal_process_tree(proc.pid, signal.SIGABRT, pause_s=1.0)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        kill_process_tree(proc.pid)
        output, _ = proc.communicate()
        pytest.fail(
            f"torchrun did not finish in {timeout:.0f} s; the stacks at the timeout:\n{output[-12000:]}"
        )
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited with {proc.returncode}:\n{output[-8000:]}")
    return output


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc (Linux); empty where /proc is unavailable."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def signal_process_tree(pid: int, signum: int, *, pause_s: float = 0.0) -> None:
    """Send ``signum`` to ``pid`` and every descendant, the deepest first, ``pause_s`` apart (so that what
    each one prints on it does not interleave with the next one's)."""
    pending, tree = [pid], []
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(_children(current))
    for member in reversed(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signum)
        time.sleep(pause_s)


def kill_process_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group and every descendant. torchrun starts each worker in a session of
    its own, so killing torchrun's group alone leaves the workers running (and holding its output pipe)."""
    signal_process_tree(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
