"""The two-channel model on WordNet and ICD-10-CM: a frozen similarity channel S (zero-shot all-MiniLM-L6-v2)
and a hierarchy channel H distilled from graph-kNN (:mod:`lorentz_rag.training.hierarchy_channel`), Lorentz
``H^d`` against its Euclidean twin ``R^d``, over seeds.

Per taxonomy (the ``lorentz-rag taxonomy build`` sets and embedding cache of ``benchmarks/tune_graph_knn.py``,
so run that first; every distinct text is embedded once and shared by every seed, row and geometry):

1. H's training targets from the train split (graph-kNN teacher with the child's own concept left out, edges
   within 3 hops, mined negatives), built once;
2. per geometry x dimension x seed: train H, then score the tune and report halves of ``eval/broader`` and
   ``eval/narrower``:
   - **H alone** (one vector search in H's space, no graph);
   - **S + H**: ``(1 - w) z(S) + w z(H)`` per query;
   - **graph-kNN + H**: ``(1 - w) z(graph-kNN's mixed score) + w z(H)``;
   with each ``w`` chosen on the tune half (grid 0, 0.1, ..., 1; ties: the smaller) per relation and seed;
3. beside them, the deterministic rows: zero-shot S and graph-kNN with its shipped settings.

Reported on the report halves: nDCG@10 x 100, mean +- sd over seeds, split by name and definition queries;
paired bootstrap intervals (queries resampled, seeds paired) of H^d - R^d, of each row against graph-kNN and
against zero-shot; H alone's share of graph-kNN's gain over zero-shot; depth Spearman of H's radius on the
level probe; wall-clock seconds per row. Writes ``RESULTS/two_channel.{json,md}``.

    .venv/bin/python benchmarks/bench_two_channel.py --taxonomies wordnet icd10cm --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_graph_knn import DiskMemoEncoder, Setup, _machine

import lorentz_rag
from lorentz_rag.data.taxonomy import read_taxonomy
from lorentz_rag.eval.retrieval import compute_metrics
from lorentz_rag.eval.stats import mean_sd, paired_bootstrap
from lorentz_rag.eval.subsumption import read_subsumption_pairs, subsumption_f1
from lorentz_rag.geometry.relation import relation_score
from lorentz_rag.models.hierarchy_channel import HierarchyChannel, HierarchyChannelConfig
from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings, mix_scores
from lorentz_rag.training.hierarchy_channel import (
    ChannelTargets,
    ChannelTrainingSettings,
    build_channel_targets,
    concept_features,
    train_hierarchy_channel,
)

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
RELATIONS = ("broader", "narrower")


def _per_query(
    qrels: dict[str, dict[str, int]], query_ids: list[str], doc_ids: list[str], scores: torch.Tensor
) -> np.ndarray:
    """nDCG@10 x 100 per query (pytrec_eval) of a score matrix ``[n, m]`` (stable ties: the earlier document)."""
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :10]
    ranked = {q: [doc_ids[p] for p in row] for q, row in zip(query_ids, top.tolist())}
    res = compute_metrics({q: qrels[q] for q in query_ids}, ranked, per_query=True)
    return np.array([100.0 * res["per_query"][q]["ndcg@10"] for q in query_ids])


class Half:
    """One half (tune or report) of one relation: S's and graph-kNN's score matrices and the qrels."""

    def __init__(self, setup: Setup, graph_settings: GraphKnnSettings) -> None:
        self.query_ids, self.doc_ids, self.qrels = setup.query_ids, setup.doc_ids, setup.qrels
        self.q, self.docs = setup.q, setup.docs
        self.s = setup.sims
        votes = setup.graph.votes(setup.q, setup.relation, graph_settings)
        link = setup.links.matrix(len(setup.graph), graph_settings.temperature)
        graph = torch.from_numpy(np.asarray((votes @ link).todense(), dtype=np.float64))
        self.g = mix_scores(self.s, graph, graph_settings.graph_weight)
        self.kind = np.array(["name" if q.endswith("#name") else "definition" for q in self.query_ids])

    def ndcg(self, scores: torch.Tensor) -> np.ndarray:
        return _per_query(self.qrels, self.query_ids, self.doc_ids, scores)


def _choose(tune: Half, h_tune: torch.Tensor, base: torch.Tensor) -> tuple[float, list[float]]:
    means = [float(tune.ndcg(mix_scores(base, h_tune, w)).mean()) for w in WEIGHTS]
    best = int(np.argmax(means))  # the first (smallest weight) of equal means
    return WEIGHTS[best], means


def _h_scores(channel: HierarchyChannel, half: Half, relation: str) -> torch.Tensor:
    with torch.no_grad():
        return channel.relation_scores(channel(half.q).double(), channel(half.docs).double(), relation)


def _spearman_depth(channel: HierarchyChannel, encoder: Any, levels: list[dict[str, Any]]) -> float:
    emb = encoder.encode([r["text"] for r in levels], "document")
    with torch.no_grad():
        radii = channel.radius(channel(emb)).numpy()
    return float(scipy_stats.spearmanr(radii, [r["depth"] for r in levels]).statistic)


class Subsumption:
    """HiT's subsumption pairs of one taxonomy (``eval/subsumption``; texts embedded once as documents, by S):
    S's pair similarities, and per channel the F1 on test of S alone, H alone and their mix, each with the
    weight and threshold that maximise validation F1 (the pair scores standardised over validation pairs)."""

    def __init__(self, folder: Path, encoder: Any, field: str) -> None:
        self.field = field
        self.halves: dict[str, dict[str, Any]] = {}
        for setting in ("hard", "random"):
            per: dict[str, Any] = {}
            for name in ("validation", "test"):
                rows = read_subsumption_pairs(
                    folder / "sets" / "eval" / "subsumption" / f"{name}.jsonl.gz", setting
                )
                children = [str(r[f"child_{field}"]) for r in rows]
                candidates = [str(r[f"candidate_{field}"]) for r in rows]
                unique = list(dict.fromkeys([*children, *candidates]))
                emb = encoder.encode(unique, "document")
                pos = {t: i for i, t in enumerate(unique)}
                a = torch.tensor([pos[t] for t in children])
                b = torch.tensor([pos[t] for t in candidates])
                s = (
                    torch.nn.functional.normalize(emb[a].double(), dim=-1)
                    * torch.nn.functional.normalize(emb[b].double(), dim=-1)
                ).sum(-1)
                per[name] = {
                    "emb": emb,
                    "a": a,
                    "b": b,
                    "s": s.numpy(),
                    "y": np.array([r["label"] for r in rows]),
                }
            self.halves[setting] = per

    def evaluate(self, channel: HierarchyChannel | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for setting, per in self.halves.items():
            h: dict[str, np.ndarray] = {}
            if channel is not None:
                for name, half in per.items():
                    with torch.no_grad():
                        p = channel(half["emb"]).double()
                    c = channel.config.curvature if channel.config.geometry == "lorentz" else None
                    h[name] = relation_score(
                        p[half["a"]],
                        p[half["b"]],
                        "broader",
                        channel.config.kind,
                        c,
                        channel.config.radius_weight,
                    ).numpy()
            val, test = per["validation"], per["test"]
            z_s = {n: (half["s"] - val["s"].mean()) / (val["s"].std() or 1.0) for n, half in per.items()}
            z_h = {n: (h[n] - h["validation"].mean()) / (h["validation"].std() or 1.0) for n in h}
            result = {}
            best = None
            for w in WEIGHTS if channel is not None else (0.0,):
                mixed = {n: z_s[n] if w == 0.0 else (1 - w) * z_s[n] + w * z_h[n] for n in per}
                f1 = subsumption_f1(mixed["validation"], val["y"], mixed["test"], test["y"])
                if w in (0.0, 1.0):
                    result["s" if w == 0.0 else "h"] = f1["f1"]
                if best is None or f1["validation_f1"] > best[0] + 1e-12:
                    best = (f1["validation_f1"], w, f1["f1"])
            result["mix"], result["w"] = best[2], best[1]
            out[setting] = result
        return out


def run_taxonomy(taxonomy: str, out: Path, model: Any, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    tag = Path(taxonomy).stem.split(".")[0]
    folder = out / tag
    halves: dict[str, dict[str, Half]] = {}
    gsettings = GraphKnnSettings()
    t0 = time.perf_counter()
    for relation in RELATIONS:
        halves[relation] = {}
        for part in ("tune", "report"):
            halves[relation][part] = Half(Setup(taxonomy, out, model, part, relation), gsettings)
    graph_seconds = time.perf_counter() - t0
    encoder = DiskMemoEncoder(model, folder / "emb")
    graph = ConceptGraph.from_taxonomy(encoder, read_taxonomy(folder / "sets" / "train.jsonl.gz"))
    levels = [
        json.loads(line) for line in (folder / "sets" / "eval" / "levels.jsonl").read_text().splitlines()
    ]
    levels = [r for r in levels if r.get("part") == "report"] or levels
    subsumption = {field: Subsumption(folder, encoder, field) for field in ("name", "text")}
    subsumption_s = {field: sub.evaluate(None) for field, sub in subsumption.items()}
    child_features, _, candidate_features = concept_features(graph)
    tsettings = ChannelTrainingSettings(
        steps=args.steps, batch_size=args.batch_size, teacher_weight=args.teacher_weight
    )
    cache = folder / f"channel_targets-{args.max_children}-tw{args.teacher_weight}.pt"
    t0 = time.perf_counter()
    if cache.is_file():
        saved = torch.load(cache, weights_only=False)
        targets, rows = ChannelTargets(**saved["targets"]), saved["rows"]
    else:
        names = np.flatnonzero(
            [
                t == (graph.definitions[c] or graph.names[c]) or t == graph.names[c]
                for t, c in zip(graph.texts, graph.text_concept.tolist())
            ]
        )
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(names, size=min(args.max_children, len(names)), replace=False))
        targets = build_channel_targets(
            graph,
            tsettings,
            children=torch.from_numpy(rows),
            progress=lambda done, total: (
                log(f"  {tag}: targets {done}/{total}") if done % 20000 < 160 else None
            ),
        )
        torch.save({"targets": targets.__dict__, "rows": rows}, cache)
    target_seconds = time.perf_counter() - t0
    log(f"{tag}: {len(targets)} children, targets in {target_seconds:.0f} s")

    deterministic = {}
    for relation in RELATIONS:
        rep = halves[relation]["report"]
        deterministic[relation] = {"zero_shot": rep.ndcg(rep.s), "graph_knn": rep.ndcg(rep.g)}
    runs: dict[str, list[dict[str, Any]]] = {}
    for geometry in args.geometries:
        for dim in args.dims:
            name = f"{'H' if geometry == 'lorentz' else 'R'}^{dim}"
            runs[name] = []
            for seed in args.seeds:
                channel = HierarchyChannel(
                    HierarchyChannelConfig(
                        input_dim=child_features.shape[1],
                        dim=dim,
                        geometry=geometry,
                        hidden_dim=args.hidden_dim,
                    )
                )
                summary = train_hierarchy_channel(
                    channel,
                    child_features,
                    candidate_features,
                    targets,
                    ChannelTrainingSettings(
                        steps=args.steps,
                        batch_size=args.batch_size,
                        seed=seed,
                        teacher_weight=args.teacher_weight,
                    ),
                    child_rows=rows,
                )
                record: dict[str, Any] = {
                    "seed": seed,
                    "train_seconds": summary["seconds"],
                    "summary": summary,
                }
                for relation in RELATIONS:
                    tune, rep = halves[relation]["tune"], halves[relation]["report"]
                    h_tune, h_rep = _h_scores(channel, tune, relation), _h_scores(channel, rep, relation)
                    w_s, means_s = _choose(tune, h_tune, tune.s)
                    w_g, means_g = _choose(tune, h_tune, tune.g)
                    record[relation] = {
                        "w_s": w_s,
                        "w_g": w_g,
                        "tune_means_s": means_s,
                        "tune_means_g": means_g,
                        "h": rep.ndcg(h_rep),
                        "s_h": rep.ndcg(mix_scores(rep.s, h_rep, w_s)),
                        "g_h": rep.ndcg(mix_scores(rep.g, h_rep, w_g)),
                    }
                record["depth_spearman"] = _spearman_depth(channel, encoder, levels)
                record["subsumption"] = {field: sub.evaluate(channel) for field, sub in subsumption.items()}
                runs[name].append(record)
                b = record["broader"]
                log(
                    f"{tag} {name} seed {seed}: {summary['seconds']:.0f} s, tune broader H {b['tune_means_s'][-1]:.2f}; "
                    f"report broader H {b['h'].mean():.2f} "
                    f"S+H {b['s_h'].mean():.2f} (w {b['w_s']}) gkNN+H {b['g_h'].mean():.2f} (w {b['w_g']}); "
                    f"zero-shot {deterministic['broader']['zero_shot'].mean():.2f} "
                    f"gkNN {deterministic['broader']['graph_knn'].mean():.2f}"
                )
    return {
        "tag": tag,
        "children": len(targets),
        "target_seconds": target_seconds,
        "graph_seconds": graph_seconds,
        "kinds": {r: halves[r]["report"].kind for r in RELATIONS},
        "deterministic": deterministic,
        "subsumption_s": subsumption_s,
        "runs": runs,
    }


def _summarise(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"tag": res["tag"], "children": res["children"], "rows": {}, "comparisons": {}}
    for relation in RELATIONS:
        det = res["deterministic"][relation]
        kinds = res["kinds"][relation]
        rows: dict[str, Any] = {}

        def row(values: np.ndarray, kinds: np.ndarray = kinds) -> dict[str, Any]:  # values [S, Q] or [Q]
            v = np.atleast_2d(values)
            entry = {"all": mean_sd(v.mean(axis=1))}
            for k in ("name", "definition"):
                if (kinds == k).any():
                    entry[k] = mean_sd(v[:, kinds == k].mean(axis=1))
            return entry

        rows["zero-shot S"] = row(det["zero_shot"])
        rows["graph-kNN"] = row(det["graph_knn"])
        comps: dict[str, Any] = {}
        gain = det["graph_knn"].mean() - det["zero_shot"].mean()
        for name, records in res["runs"].items():
            for key, label in (
                ("h", f"{name} alone"),
                ("s_h", f"S + {name}"),
                ("g_h", f"graph-kNN + {name}"),
            ):
                a = np.stack([r[relation][key] for r in records])
                rows[label] = row(a)
                rows[label]["weights"] = (
                    [r[relation]["w_s" if key == "s_h" else "w_g"] for r in records] if key != "h" else None
                )
                comps[f"{label} - graph-kNN"] = paired_bootstrap(a, det["graph_knn"])
                comps[f"{label} - zero-shot"] = paired_bootstrap(a, det["zero_shot"])
            a = np.stack([r[relation]["h"] for r in records])
            comps[f"{name} alone: share of graph-kNN's gain"] = {
                "mean": float((a.mean() - det["zero_shot"].mean()) / gain) if gain else float("nan")
            }
        names = list(res["runs"])
        for hn in [n for n in names if n.startswith("H^")]:
            rn = "R^" + hn[2:]
            if rn in res["runs"]:
                for key, label in (("h", "alone"), ("s_h", "S +"), ("g_h", "graph-kNN +")):
                    a = np.stack([r[relation][key] for r in res["runs"][hn]])
                    b = np.stack([r[relation][key] for r in res["runs"][rn]])
                    comps[f"{hn} - {rn} ({label})"] = paired_bootstrap(a, b)
        out["rows"][relation] = rows
        out["comparisons"][relation] = comps
    # The decision is taken on the tune halves: each row's tune nDCG@10 at its chosen weight (mean over seeds).
    decision: dict[str, Any] = {}
    for relation in RELATIONS:
        first = next(iter(res["runs"].values()))[0][relation]
        rows = {"zero-shot S": first["tune_means_s"][0], "graph-kNN": first["tune_means_g"][0]}
        for name, records in res["runs"].items():
            rows[f"{name} alone"] = float(np.mean([r[relation]["tune_means_s"][-1] for r in records]))
            rows[f"S + {name}"] = float(np.mean([max(r[relation]["tune_means_s"]) for r in records]))
            rows[f"graph-kNN + {name}"] = float(np.mean([max(r[relation]["tune_means_g"]) for r in records]))
        decision[relation] = rows
    out["tune"] = decision
    sub: dict[str, Any] = {}
    for field, by_setting in res["subsumption_s"].items():
        for setting, r in by_setting.items():
            sub[f"zero-shot S ({field}, {setting})"] = {"f1": (r["s"], 0.0)}
    for name, records in res["runs"].items():
        for field in ("name", "text"):
            for setting in ("hard", "random"):
                rs = [r["subsumption"][field][setting] for r in records]
                sub[f"{name} ({field}, {setting})"] = {
                    "h": mean_sd([r["h"] for r in rs]),
                    "mix": mean_sd([r["mix"] for r in rs]),
                    "w": [r["w"] for r in rs],
                }
    out["subsumption"] = sub
    out["train_seconds"] = {n: mean_sd([r["train_seconds"] for r in recs]) for n, recs in res["runs"].items()}
    out["depth_spearman"] = {
        n: mean_sd([r["depth_spearman"] for r in recs]) for n, recs in res["runs"].items()
    }
    return out


def _fmt(ms: tuple[float, float]) -> str:
    return f"{ms[0]:.2f} +- {ms[1]:.2f}"


def _markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        "# Two-channel model: frozen similarity S + hierarchy channel H distilled from graph-kNN",
        "",
        f"{m['date']}, commit {m['commit']}, {m['nproc']} CPUs ({m['cpu']}), load average "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])} at the end, {m['torch_threads']} torch thread(s).",
        "",
        f"Command: `{meta['command']}`. Seeds {meta['seeds']}; H trained {meta['steps']} steps of "
        f"{meta['batch_size']} children on at most {meta['max_children']} train-concept texts (names and "
        "definitions); weights chosen on the tune half per relation and seed (grid 0, 0.1, ..., 1).",
        "",
        "nDCG@10 x 100 on the report halves, mean +- sd over seeds (the deterministic rows have sd 0).",
        "",
    ]
    for part in meta.get("parts", []):
        pm = part["machine"]
        lines.insert(
            4,
            f"- `{part['command']}`: ended {pm['date']}, load average {pm['load_average'][0]:.2f}, "
            f"commit {pm['commit']}",
        )
    for tax in summary["taxonomies"]:
        lines += [f"## {tax['tag']} ({tax['children']} training children)", ""]
        for relation in RELATIONS:
            rows = tax["rows"][relation]
            lines += [
                f"### {relation}",
                "",
                "| row | all | name queries | definition queries | tune weights |",
                "|---|---|---|---|---|",
            ]
            for label, r in rows.items():
                w = r.get("weights")
                lines.append(
                    f"| {label} | {_fmt(r['all'])} | {_fmt(r['name']) if 'name' in r else '-'} | "
                    f"{_fmt(r['definition']) if 'definition' in r else '-'} | {w if w else '-'} |"
                )
            lines += ["", "| comparison | mean | 95% interval |", "|---|---|---|"]
            for label, c in tax["comparisons"][relation].items():
                if "low" in c:
                    lines.append(f"| {label} | {c['mean']:+.2f} | [{c['low']:+.2f}, {c['high']:+.2f}] |")
                else:
                    lines.append(f"| {label} | {c['mean']:.2f} | - |")
            lines.append("")
        lines += [
            "Tune halves (what the decision reads): nDCG@10 x 100 at each row's chosen weight, mean over seeds:",
            "",
            "| row | " + " | ".join(RELATIONS) + " |",
            "|---|" + "---|" * len(RELATIONS),
        ]
        for label in tax["tune"]["broader"]:
            lines.append(
                f"| {label} | " + " | ".join(f"{tax['tune'][r][label]:.2f}" for r in RELATIONS) + " |"
            )
        best = max(tax["tune"]["broader"], key=lambda k: tax["tune"]["broader"][k])
        lines += ["", f"Best broader row on the tune half: **{best}**.", ""]
        lines += [
            "| channel | training seconds | depth Spearman (H radius vs depth, report levels) |",
            "|---|---|---|",
        ]
        for n in tax["train_seconds"]:
            lines.append(f"| {n} | {_fmt(tax['train_seconds'][n])} | {_fmt(tax['depth_spearman'][n])} |")
        lines += [
            "",
            "Subsumption F1 on test (HiT's protocol; weight and threshold chosen on validation; texts: the "
            "concepts' names or definitions):",
            "",
            "| row (texts, negatives) | S alone | H alone | S + H | weights |",
            "|---|---|---|---|---|",
        ]
        for label, r in tax["subsumption"].items():
            if "f1" in r:
                lines.append(f"| {label} | {r['f1'][0]:.3f} | - | - | - |")
            else:
                lines.append(
                    f"| {label} | - | {r['h'][0]:.3f} +- {r['h'][1]:.3f} | {r['mix'][0]:.3f} +- {r['mix'][1]:.3f} | {r['w']} |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--taxonomies", nargs="+", default=["wordnet", "icd10cm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--dims", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--geometries", nargs="+", default=["lorentz", "euclidean"])
    parser.add_argument("--hidden-dim", type=int, default=512)
    parser.add_argument("--teacher-weight", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-children", type=int, default=60000)
    parser.add_argument("--out", default="runs/graph_knn")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="two_channel")
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="write RESULTS/NAME.{json,md} from the results of runs made one taxonomy per process",
    )
    args = parser.parse_args(argv)
    if args.combine:
        parts = [json.loads(Path(p).read_text()) for p in args.combine]
        meta = {k: parts[0][k] for k in ("seeds", "steps", "batch_size", "max_children")}
        meta["machine"] = _machine()
        meta["command"] = "one process per taxonomy at once, then " + (
            ".venv/bin/python benchmarks/bench_two_channel.py "
            + " ".join(argv if argv is not None else sys.argv[1:])
        )
        meta["parts"] = [{"command": p["command"], "machine": p["machine"]} for p in parts]
        summary = {"taxonomies": [t for p in parts for t in p["taxonomies"]]}
        results = Path(args.results)
        (results / f"{args.name}.json").write_text(json.dumps({**meta, **summary}, indent=1) + "\n")
        (results / f"{args.name}.md").write_text(_markdown(summary, meta))
        print(_markdown(summary, meta))
        return

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    model = lorentz_rag.load_model(str(lorentz_rag.models.packaged_minilm_path()))
    raw = [run_taxonomy(t, Path(args.out), model, args, log) for t in args.taxonomies]
    summary = {"taxonomies": [_summarise(r) for r in raw]}
    command = ".venv/bin/python benchmarks/bench_two_channel.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    meta = {
        "machine": _machine(),
        "command": command,
        "seeds": args.seeds,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_children": args.max_children,
        "hidden_dim": args.hidden_dim,
        "teacher_weight": args.teacher_weight,
        "geometries": args.geometries,
        "dims": args.dims,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(
        json.dumps({**meta, **summary}, indent=1, default=float) + "\n"
    )
    text = _markdown(summary, meta)
    (results / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
