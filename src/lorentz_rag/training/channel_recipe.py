"""The hierarchy channel recipe (``train_args.task=hierarchy_channel``): one command turns a frozen model and
a taxonomy into a two-channel model.

    lorentz-rag train --config=configs/taxonomy/hyte_h.yaml --taxonomy_args.path=T \\
        --train_args.output_dir=OUT                    # OUT/final is the model

1. **Split** the taxonomy as the single-channel recipe and ``lorentz-rag taxonomy build`` do with the same
   ``taxonomy_args`` (held-out concepts never reach training); ``OUT/taxonomy/train.jsonl.gz`` and
   ``split.json``.
2. **Encode once**: the frozen model (``model_args.model_name``, loaded as saved: it is the similarity channel
   S, and its rankings cannot move) embeds every distinct text of the train split once, with a progress bar.
3. **Train H** (:mod:`lorentz_rag.training.hierarchy_channel`, ``channel_args``, seed ``train_args.seed``)
   on at most ``max_children`` names and definitions of train concepts (a sample fixed by
   ``taxonomy_args.seed``).
4. **Choose the mixing weights** per relation on the validation concepts (at most ``validation_queries``
   name and definition queries against every train concept; relevant: train ancestors (``broader``) or
   descendants (``narrower``) within 3 hops, graded ``4 - hops``): the weight in 0, 0.1, ..., 1 with the best
   mean nDCG@10 (ties: the smaller), once for H with S (``weights``; 0 is plain S) and once for H with
   graph-kNN over the train split (``graph_weights``; 0 is graph-kNN alone); a relation whose best S + H
   beats its best mixture with the graph ranks by S + H even with the taxonomy at hand
   (``graph_relations``).
5. **Save** S with H attached to ``OUT/final`` (``hierarchy_channel/`` inside) and, with
   ``channel_args.carry_taxonomy`` (the default), the train split's embedded concepts (``taxonomy/``), so the
   model's ``broader`` / ``narrower`` search is graph-kNN mixed with H wherever it searches
   (:mod:`lorentz_rag.search.relation`); the run's config to ``OUT/config.yaml`` and what was measured to
   ``OUT/channel_training.json``.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorentz_rag.atomic_files import write_json
from lorentz_rag.data.concepts import Taxonomy, hop_distances
from lorentz_rag.data.taxonomy import write_taxonomy
from lorentz_rag.eval.retrieval import compute_metrics
from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.models.factory import load_model
from lorentz_rag.models.hierarchy_channel import HierarchyChannel, HierarchyChannelConfig
from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings, mix_scores
from lorentz_rag.training.config import TrainConfig, write_config
from lorentz_rag.training.hierarchy_channel import (
    ChannelTrainingSettings,
    build_channel_targets,
    concept_features,
    train_hierarchy_channel,
)
from lorentz_rag.training.run import TrainResult
from lorentz_rag.training.taxonomy_recipe import TAXONOMY_FOLDER, split_for_run

__all__ = ["WEIGHT_GRID", "choose_weights", "run_channel_recipe"]

#: The mixing weights tried on the validation concepts.
WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
_JUDGED_HOPS = 3


def _validation_queries(
    full: Taxonomy, graph: ConceptGraph, validation: list[str], limit: int, seed: int
) -> dict[str, tuple[list[str], list[dict[int, int]]]]:
    """Per relation: query texts (validation names and definitions) and their judged train concepts."""
    children: dict[str, list[str]] = {}
    for concept in full:
        for parent in concept.parents:
            children.setdefault(parent, []).append(concept.id)
    steps = {"broader": lambda i: full[i].parents, "narrower": lambda i: children.get(i, [])}
    order = list(validation)
    random.Random(f"channel-validation-{seed}").shuffle(order)
    out: dict[str, tuple[list[str], list[dict[int, int]]]] = {}
    for relation, step in steps.items():
        texts: list[str] = []
        judged: list[dict[int, int]] = []
        for concept_id in order:
            hops = hop_distances(concept_id, step, _JUDGED_HOPS)
            relevant = {
                graph.position[a]: _JUDGED_HOPS + 1 - h
                for a, h in hops.items()
                if a in graph.position and h > 0
            }
            if not relevant:
                continue
            concept = full[concept_id]
            for text in dict.fromkeys(
                t.strip() for t in (concept.name, concept.definition) if t and t.strip()
            ):
                texts.append(text)
                judged.append(relevant)
            if len(texts) >= limit:
                break
        out[relation] = (texts[:limit], judged[:limit])
    return out


def choose_weights(
    channel: HierarchyChannel,
    model: Any,
    candidate_features: torch.Tensor,
    queries: dict[str, tuple[list[str], list[dict[int, int]]]],
    *,
    graph: ConceptGraph | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Mean validation nDCG@10 per weight of :data:`WEIGHT_GRID` and the chosen weight, per relation: H mixed
    with S (``weight``) and, with ``graph`` (the train split the model will carry, whose concepts are the
    candidates), H mixed with graph-kNN's score (``graph_weight``; 0 is graph-kNN alone)."""
    c = model.curvature()
    c = None if c is None else float(c)
    with torch.no_grad():
        h_docs = channel(candidate_features.float()).double()
    docs = candidate_features.double()
    result: dict[str, Any] = {}
    for relation, (texts, judged) in queries.items():
        if not texts:
            result[relation] = {
                "queries": 0,
                "grid": {},
                "weight": 0.0,
                "graph_grid": {},
                "graph_weight": 0.0,
            }
            continue
        q = model.encode(texts, "query", batch_size)
        with torch.no_grad():
            h_q = channel(q.float()).double()
        ranked: list[dict[str, list[str]]] = [{} for _ in WEIGHT_GRID]
        ranked_graph: list[dict[str, list[str]]] = [{} for _ in WEIGHT_GRID]
        for start in range(0, len(texts), 128):
            stop = start + 128
            s = similarity_fns.pairwise(q[start:stop].double(), docs, model.settings.similarity, c)
            h = channel.relation_scores(h_q[start:stop], h_docs, relation)
            g = None
            if graph is not None:
                # Every candidate is a concept document: its graph score is its own vote.
                votes = torch.from_numpy(np.asarray(graph.votes(q[start:stop], relation).todense()))
                g = mix_scores(s, votes, graph.settings.graph_weight)
            for w_i, w in enumerate(WEIGHT_GRID):
                # Ranked as the search ranks: stable, ties to the earlier concept.
                for base, into in ((s, ranked), (g, ranked_graph)):
                    if base is None:
                        continue
                    mixed = mix_scores(base, h, w) if w > 0 else base
                    top = torch.sort(mixed, dim=1, descending=True, stable=True).indices[:, :10]
                    for r, row in enumerate(top.tolist()):
                        into[w_i][f"q{start + r}"] = [str(p) for p in row]
        qrels = {f"q{i}": {str(p): g for p, g in rel.items()} for i, rel in enumerate(judged)}
        entry: dict[str, Any] = {"queries": len(texts)}
        for key, runs in (("", ranked), ("graph_", ranked_graph if graph is not None else None)):
            if runs is None:
                entry.update({"graph_grid": {}, "graph_weight": 0.0})
                continue
            means = np.array([compute_metrics(qrels, run)["ndcg@10"] for run in runs])
            best = int(np.argmax(means))  # the first (smallest weight) of equal means
            entry[f"{key}grid"] = {str(w): float(100.0 * m) for w, m in zip(WEIGHT_GRID, means)}
            entry[f"{key}weight"] = WEIGHT_GRID[best]
        result[relation] = entry
    return result


def run_channel_recipe(config: TrainConfig) -> TrainResult:
    """Steps 1-5 of the module docstring; the output folder is already claimed and locked by the trainer."""
    started = time.perf_counter()
    args, ch = config.taxonomy_args, config.channel_args
    out = Path(config.train_args.output_dir)
    source, full, split = split_for_run(args)
    folder = out / TAXONOMY_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    write_taxonomy(split.train, folder / f".train-{os.getpid()}.jsonl.gz").replace(folder / "train.jsonl.gz")
    write_json(
        folder / "split.json",
        {
            "taxonomy": str(source),
            "seed": args.seed,
            "held_out_fraction": args.held_out_fraction,
            "validation_fraction": args.validation_fraction,
            "concepts": len(full),
            "train_concepts": len(split.train),
            "held_out": list(split.held_out),
            "validation": list(split.validation),
        },
    )
    write_config(config, out / "config.yaml")

    model = load_model(config.model_args.model_name or "", device=config.train_args.device or "cpu")
    model.attach_hierarchy_channel(None)  # a channel the base may carry is replaced, not stacked
    t0 = time.perf_counter()
    graph = ConceptGraph.from_taxonomy(model, split.train, GraphKnnSettings(), show_progress_bar=True)
    encode_seconds = time.perf_counter() - t0
    child_features, _, candidate_features = concept_features(graph)
    names = np.flatnonzero(
        [
            t in (graph.names[c], graph.definitions[c] or graph.names[c])
            for t, c in zip(graph.texts, graph.text_concept.tolist())
        ]
    )
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(names, size=min(ch.max_children, len(names)), replace=False))
    settings = ChannelTrainingSettings(
        steps=ch.steps,
        batch_size=ch.batch_size,
        lr=ch.learning_rate,
        teacher_weight=ch.teacher_weight,
        seed=config.train_args.seed,
        warmup=min(100, max(0, ch.steps // 10)),
    )
    t0 = time.perf_counter()
    targets = build_channel_targets(graph, settings, children=torch.from_numpy(rows))
    target_seconds = time.perf_counter() - t0
    channel = HierarchyChannel(
        HierarchyChannelConfig(
            input_dim=model.embedding_dim,
            dim=ch.dim,
            geometry=ch.geometry,
            hidden_dim=ch.hidden_dim,
            curvature=ch.curvature,
            max_radius=ch.max_radius,
            radius_weight=ch.radius_weight,
        )
    )
    summary = train_hierarchy_channel(
        channel, child_features, candidate_features, targets, settings, child_rows=rows, log=print
    )
    queries = _validation_queries(full, graph, list(split.validation), ch.validation_queries, args.seed)
    chosen = choose_weights(channel, model, candidate_features, queries, graph=graph)
    for relation, result in chosen.items():
        if not result["queries"]:
            print(
                f"warning: no validation concept has a {relation} relative in the train split: its weight "
                "stays 0 (plain similarity); hold out more concepts (taxonomy_args.held_out_fraction)"
            )
    channel.config.weights = {r: chosen[r]["weight"] for r in ("broader", "narrower")}
    channel.config.graph_weights = {r: chosen[r]["graph_weight"] for r in ("broader", "narrower")}
    # A relation keeps the graph unless S + H beat every mixture with it on validation (ties: the graph).
    channel.config.graph_relations = [
        r
        for r in ("broader", "narrower")
        if max(chosen[r]["graph_grid"].values(), default=0.0) >= max(chosen[r]["grid"].values(), default=0.0)
    ]
    model.attach_hierarchy_channel(channel)
    if ch.carry_taxonomy:
        model.attach_concept_graph(graph)
    final = out / "final"
    staging = out / "final.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    report = {
        "taxonomy": str(source),
        "model": config.model_args.model_name,
        "channel": channel.config.to_dict(),
        "training": settings.to_dict(),
        "children": len(rows),
        "concepts": len(graph),
        "texts_encoded": len(set(graph.texts)),
        "seconds": {
            "encode": encode_seconds,
            "targets": target_seconds,
            "train": summary["seconds"],
            "total": time.perf_counter() - started,
        },
        "final_cross_entropy": summary["final_cross_entropy"],
        "validation": chosen,
    }
    write_json(out / "channel_training.json", report)
    print(
        f"hierarchy channel: graph-kNN used for {channel.config.graph_relations or 'no relation'}; "
        f"{ch.geometry} {ch.dim}-d, weights with similarity: broader "
        f"{chosen['broader']['weight']}, narrower {chosen['narrower']['weight']}; with graph-kNN: broader "
        f"{chosen['broader']['graph_weight']}, narrower {chosen['narrower']['graph_weight']} (validation "
        f"nDCG@10); saved to {final}"
        + (f" with the train split's {len(graph)} concepts (graph-kNN)" if ch.carry_taxonomy else "")
    )
    return TrainResult(
        output_dir=out, final_model_dir=final, steps=ch.steps, last_loss=summary["final_cross_entropy"]
    )
