"""``python tests/training/_plain_ddp_train.py [train.py arguments]``: train as ``train.py`` does, but with
DDP's default settings (the trainer's ``ddp_wrapper`` replaced): the reference for the trainer's DDP settings."""

from __future__ import annotations

import sys

from torch import nn

from lorentz_rag.training import trainer
from lorentz_rag.training.config import parse_command_line

if __name__ == "__main__":
    trainer.ddp_wrapper = lambda step_module, device, args: nn.parallel.DistributedDataParallel(step_module)
    parsed = parse_command_line(sys.argv[1:])
    trainer.train(parsed.config, deepspeed_config=parsed.deepspeed_config)
