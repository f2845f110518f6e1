"""``python tests/training/_kill_after_step.py N [train.py arguments]``: train as ``train.py`` does, and
SIGKILL this process right after optimizer step ``N`` (and the checkpoint due at it), exactly like a
pre-empted job. The kill is the ``after_step`` hook of :func:`lorentz_rag.training.trainer.train`, so the
production loop carries no test code."""

from __future__ import annotations

import os
import signal
import sys

from lorentz_rag.training.config import parse_command_line
from lorentz_rag.training.trainer import train


def main(argv: list[str]) -> None:
    kill_after, train_argv = int(argv[0]), argv[1:]

    def kill_at(step: int) -> None:
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    parsed = parse_command_line(train_argv)
    train(parsed.config, deepspeed_config=parsed.deepspeed_config, after_step=kill_at)


if __name__ == "__main__":
    main(sys.argv[1:])
