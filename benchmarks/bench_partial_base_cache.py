"""The partial-base state cache's speed-up: the taxonomy recipe (configs/taxonomy/hyte_h.yaml, the top MiniLM
layer trained, five frozen) trained three ways on the same data, interleaved over ``--reps`` rounds:

- ``batched``: the whole base in one padded batch per forward (the path before the cache existed; it
  differs from the other two in the last bits, so it is the speed reference, not a numerical one);
- ``uncached``: the frozen lower layers text by text, nothing kept (what ``cache_base_states: false`` runs);
- ``cached``: the same with ``train_args.cache_base_states`` (bit-identical to ``uncached``,
  tests/models/test_partial_base_cache.py).

Data: ``--pairs`` of the bundled ICD-10-CM taxonomy's own pairs (its train split, as the recipe derives
them) and its hierarchy objective on a pool of ``--max-children`` concepts, so texts come back after the
first epoch as they do over a long run, several seeds, or the twin trained on the same texts. Reported:
wall seconds of each run (the median round; the first includes the cache's misses) and the ratios. Run:

    .venv/bin/python benchmarks/bench_partial_base_cache.py [--steps 24] [--reps 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from lorentz_rag.models import hf_base
from lorentz_rag.training.config import load_config
from lorentz_rag.training.taxonomy_recipe import prepare_taxonomy_run
from lorentz_rag.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "taxonomy" / "single_channel" / "hyte_h.yaml"
MODES = ("batched", "uncached", "cached")


@contextlib.contextmanager
def _batched_base():
    """The whole base in one batched forward: no frozen lower part is recognised."""
    original = hf_base.frozen_lower_layers
    hf_base.frozen_lower_layers = lambda base: 0
    try:
        yield
    finally:
        hf_base.frozen_lower_layers = original


def _run(mode: str, common: dict, out: Path) -> float:
    overrides = {
        **common,
        "train_args.output_dir": str(out),
        "train_args.cache_base_states": mode == "cached",
    }
    config = load_config(CONFIG, overrides, dotenv_dir=None)
    context = _batched_base() if mode == "batched" else contextlib.nullcontext()
    start = time.perf_counter()
    with context:
        train(config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--max-children", type=int, default=200)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-partial-cache-") as tmp:
        prepared = prepare_taxonomy_run(
            load_config(
                CONFIG,
                {
                    "taxonomy_args.path": "icd10cm",
                    "taxonomy_args.max_pairs": args.pairs,
                    "taxonomy_args.replay_share": 0.0,
                    "train_args.output_dir": f"{tmp}/data",
                },
                dotenv_dir=None,
            )
        )
        common = {
            "data_args.data_path": prepared.data_args.data_path,
            "hierarchy_args.taxonomy_path": prepared.hierarchy_args.taxonomy_path,
            "hierarchy_args.max_children": args.max_children,
            "train_args.max_steps": args.steps,
            "train_args.batch_size": args.batch_size,
            "train_args.num_threads": args.threads,
            "train_args.log_every": args.steps,
        }
        seconds: dict[str, list[float]] = {m: [] for m in MODES}
        for rep in range(args.reps):
            for mode in MODES:
                seconds[mode].append(_run(mode, common, Path(tmp) / f"{mode}-{rep}"))
                print(f"round {rep + 1}: {mode:>9} {seconds[mode][-1]:7.1f} s", flush=True)
    median = {m: statistics.median(v) for m, v in seconds.items()}
    load = os.getloadavg()[0]
    print(
        f"\n{args.steps} steps x batch {args.batch_size} on {args.pairs} ICD-10-CM pairs + hierarchy pool "
        f"{args.max_children}, {args.threads} threads, load average {load:.1f}, median of {args.reps}:"
    )
    for mode in MODES:
        print(f"  {mode:>9}: {median[mode]:7.1f} s  (rounds: {', '.join(f'{s:.1f}' for s in seconds[mode])})")
    print(
        f"  cached is {median['uncached'] / median['cached']:.2f}x uncached and "
        f"{median['batched'] / median['cached']:.2f}x batched"
    )


if __name__ == "__main__":
    main()
