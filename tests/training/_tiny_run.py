"""Command-line overrides shared by the subprocess training tests: a one-layer trunk and a few rows, so a
launcher (torchrun, DeepSpeed) test spends its time on the launcher, not on the model."""

from __future__ import annotations

TINY_RUN_OVERRIDES = [
    "--model_args.init_from=null",
    "--model_args.hidden_size=32",
    "--model_args.num_hidden_layers=1",
    "--model_args.num_attention_heads=2",
    "--model_args.intermediate_size=48",
    "--model_args.max_seq_length=32",
    "--train_args.batch_size=4",
    "--train_args.save_every=2",
    "--train_args.log_every=1",
    "--data_args.max_rows=64",
]
