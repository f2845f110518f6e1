"""Launched by tests/eval/test_encode_parallel.py under ``torchrun --nproc-per-node=2`` (gloo, CPU).

One process group for two commands: ``lorentz-rag index build`` (shards in a work folder, rank 0 writes the index)
and ``lorentz-rag eval beir`` (shards gathered in memory, rank 0 writes the metrics). ``argv[1]`` and ``argv[2]``
are the two command lines as JSON lists.
"""

from __future__ import annotations

import json
import sys

import torch

from lorentz_rag import cli
from lorentz_rag.training.distributed import command_process_group


def main(index_args: list[str], beir_args: list[str]) -> None:
    with command_process_group() as world:
        assert world.world_size == 2 and torch.distributed.get_backend() == "gloo", world
        assert cli.main(index_args) == 0
        assert cli.main(beir_args) == 0


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), json.loads(sys.argv[2]))
