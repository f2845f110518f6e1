"""Seed-compatible training entry point: a thin wrapper over ``lorentz_rag.training``.

    python train.py --config=configs/train/cpu_tiny_mlm.yaml
    torchrun --nproc-per-node=4 train.py --config=configs/train/contrastive_pretrain_albert.yaml \
        --train_args.dtype=bf16 --train_args.distance=lorentz_inner
    deepspeed --num_gpus=4 train.py --config=configs/train/albert_mlm_modernbert.yaml \
        --deepspeed_config=configs/deepspeed/ds_config.json

Any ``--section.key=value`` overrides the YAML; see ``python train.py --help`` for every key.
"""

from __future__ import annotations

import sys

from lorentz_rag.training.trainer import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
