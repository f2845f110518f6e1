"""Score HiT's points (``run_hit.py``'s output) on a taxonomy's sets with the project's evaluation code.

Runs in the project's venv. HiT's points lie on the Poincaré ball of curvature ``c`` (``1 / dim``, from
``run.json``); ``d`` is the ball's geodesic distance and ``|x|_h = d(0, x)`` the hyperbolic norm. HiT scores
"is ``parent`` a parent of ``child``" as (``HierarchyTransformerEvaluator.inference``)

    s(child, parent) = -(d(child, parent) + lambda * (|parent|_h - |child|_h)).

Measured:

- **broader** retrieval (``eval/broader``: a held-out concept's name or definition -> its ancestors within 3
  hops, graded): each query ``q`` is a child, each document ``x`` a candidate parent, ranked by ``s(q, x)``;
- **narrower** (``eval/narrower``): the mirror, ``q`` the parent and ``x`` a candidate child, ``s(x, q)``;
- both with the benchmark's own documents (``title + " " + text``, the concept's definition) and, as a
  diagnostic, with each document's concept name instead (HiT is trained on names only);
- nDCG@10 x 100 (:func:`lorentz_rag.eval.retrieval.compute_metrics`, ties: the earlier document) on the
  ``tune`` and ``report`` halves; ``lambda`` is chosen on the tune half per relation and document kind (best
  mean nDCG@10; ties: the smaller). The grid is 0, 0.1, ..., 10 (HiT's own search: 0, 0.1, ..., 4.9) and
  doubles its top while the choice sits there, so a chosen ``lambda`` is at the top edge only past 160;
  lambda < 0 is outside HiT's score, so a choice of 0 stands, with the tune nDCG@10 at a few negative values
  beside it (how much that bound costs);
- **subsumption F1** (HiT's protocol, :mod:`lorentz_rag.eval.subsumption`): per negative setting (``hard``
  is the headline, ``random`` beside it) and pair field (``name``: HiT's; ``text``: definitions), ``lambda``
  and the threshold that maximise validation F1 (exact threshold search), then F1 on test at both;
- **S + HiT** (unless ``--no-s-mix``): HiT as a hierarchy channel beside a frozen similarity channel S, the
  zero-shot packaged all-MiniLM-L6-v2 (``lorentz_rag.load_model``; cosine similarity, queries encoded with
  the ``query`` prompt, documents with ``document``). Per query, ``(1 - w) z(S similarity) + w z(HiT score)``,
  each standardised over the documents (:func:`lorentz_rag.geometry.relation.mix_scores`), HiT's score at the
  ``lambda`` chosen for it alone (above); ``w`` from 0, 0.1, ..., 1 chosen on the tune half by mean nDCG@10
  (ties: the smaller), ranked stably (ties: the earlier document). ``w = 0`` ranks by S itself, so the row
  at ``w = 0`` is the S row exactly. Broader and narrower, the benchmark's documents (definitions) only; the
  S row beside it, and the paired bootstrap interval of S + HiT - S over the report queries. A tune half
  without judged queries makes no choice: ``w = 0`` (S alone), as ``lambda = 0`` for HiT alone.

The closed-form distance used here is checked against geoopt's (HiT's own) on the pairs ``run.json`` keeps.
Writes ``OUT/hit_scores.json`` (with per-query report nDCG@10 of every row, for paired statistics) and
``OUT/hit_scores.md``.

    .venv/bin/python benchmarks/peers/hit/score_hit.py --sets runs/graph_knn/wordnet/sets --points runs/hit/wordnet
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import lorentz_rag
from lorentz_rag.data.beir import document_text, load_beir
from lorentz_rag.data.jsonl import read_jsonl_numbered
from lorentz_rag.eval.retrieval import compute_metrics
from lorentz_rag.eval.stats import paired_bootstrap
from lorentz_rag.eval.subsumption import best_threshold, read_subsumption_pairs, subsumption_f1
from lorentz_rag.geometry.relation import mix_scores

ROOT = Path(__file__).resolve().parents[3]
RELATIONS = ("broader", "narrower")
PARTS = ("tune", "report")
DOCUMENT_KINDS = ("definition", "name")
SETTINGS = ("hard", "random")
FIELDS = ("name", "text")
BASE_GRID = tuple(round(0.1 * i, 1) for i in range(101))
#: Below HiT's score family (never chosen): how much the lambda >= 0 bound costs when 0 is chosen.
BELOW_ZERO = (-0.1, -0.2, -0.5, -1.0)
MAX_LAMBDA = 160.0
#: The frozen similarity channel S of the S + HiT row, and the grid of HiT's weight ``w`` beside it.
S_MODEL = "all-MiniLM-L6-v2"
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
#: Rows of the pairwise distance computed at once (x the corpus size, float64).
_BLOCK = 256


class Ball:
    """HiT's Poincaré ball of curvature ``c``: geodesic distance and hyperbolic norm in float64."""

    def __init__(self, c: float) -> None:
        self.c = float(c)
        self.sqrt_c = float(np.sqrt(self.c))

    def _checked(self, sq_norm: torch.Tensor) -> torch.Tensor:
        inside = 1.0 - self.c * sq_norm
        if not bool((inside > 0).all()):
            raise ValueError("a point lies on or outside the Poincaré ball")
        return inside

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """``d(0, x) = 2 / sqrt(c) * artanh(sqrt(c) |x|)`` (geoopt's ``dist0``)."""
        self._checked((x * x).sum(-1))
        return 2.0 / self.sqrt_c * torch.atanh(self.sqrt_c * x.norm(dim=-1))

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``[n, m]`` distances ``arcosh(1 + 2c |a - b|^2 / ((1 - c|a|^2)(1 - c|b|^2))) / sqrt(c)``, which equals
        geoopt's ``2 / sqrt(c) * artanh(sqrt(c) |-a (+) b|)``; ``arcosh(1 + z) = log1p(z + sqrt(z (z + 2)))``."""
        an, bn = (a * a).sum(-1), (b * b).sum(-1)
        ia, ib = self._checked(an), self._checked(bn)
        out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float64)
        for i in range(0, a.shape[0], _BLOCK):
            sq = (an[i : i + _BLOCK, None] + bn[None, :] - 2.0 * a[i : i + _BLOCK] @ b.T).clamp_min(0.0)
            z = 2.0 * self.c * sq / (ia[i : i + _BLOCK, None] * ib[None, :])
            out[i : i + _BLOCK] = torch.log1p(z + torch.sqrt(z * (z + 2.0))) / self.sqrt_c
        return out

    def rowwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``[n]`` distances of the pairs ``(a[i], b[i])``."""
        sq = ((a - b) ** 2).sum(-1)
        z = 2.0 * self.c * sq / (self._checked((a * a).sum(-1)) * self._checked((b * b).sum(-1)))
        return torch.log1p(z + torch.sqrt(z * (z + 2.0))) / self.sqrt_c


class Points:
    """HiT's points of ``run_hit.py``'s output folder, looked up by text."""

    def __init__(self, folder: Path) -> None:
        self.run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        texts = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
        self.points = torch.from_numpy(np.load(folder / "points.npy").astype(np.float64))
        if self.points.shape[0] != len(texts):
            raise ValueError(f"{folder}: {self.points.shape[0]} points for {len(texts)} texts")
        self.row = {t: i for i, t in enumerate(texts)}
        self.ball = Ball(self.run["training"]["curvature"])

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in texts if t not in self.row]
        if missing:
            raise KeyError(f"{len(missing)} texts were not encoded by run_hit.py, e.g. {missing[:2]}")
        return self.points[[self.row[t] for t in texts]]

    def check_distance(self) -> dict[str, float]:
        """The largest relative gap between this file's distance / norm and geoopt's on the kept pairs."""
        check = self.run["geoopt_check"]
        if not check["rows"]:
            return {"pairs": 0, "dist": 0.0, "dist0": 0.0}
        rows = torch.tensor(check["rows"])
        x, y = self.points[rows], self.points[rows + 1]
        gaps = {
            "dist": (self.ball.rowwise(x, y) - torch.tensor(check["dist"])).abs()
            / torch.tensor(check["dist"]).clamp_min(1e-12),
            "dist0": (self.ball.norm(x) - torch.tensor(check["dist0"])).abs()
            / torch.tensor(check["dist0"]).clamp_min(1e-12),
        }
        out = {"pairs": len(rows), **{k: float(v.max()) for k, v in gaps.items()}}
        if max(out["dist"], out["dist0"]) > 1e-6:
            raise AssertionError(f"the closed-form distance disagrees with geoopt's: {out}")
        return out


class SimilarityChannel:
    """The frozen similarity channel S: ``model``'s own similarity (float64) of queries encoded with the
    ``query`` prompt and documents with ``document``; each distinct (prompt, text) is encoded once."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self.similarity = str(model.settings.similarity)
        self.encoded = 0
        self.seconds = 0.0
        self._memo: dict[tuple[str, str], torch.Tensor] = {}

    def encode(self, texts: list[str], prompt: str) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if (prompt, t) not in self._memo))
        if missing:
            start = time.perf_counter()
            emb = self.model.encode(missing, prompt_type=prompt, batch_size=64)
            self.seconds += time.perf_counter() - start
            self.encoded += len(missing)
            self._memo.update(zip(((prompt, t) for t in missing), emb))
        if not texts:
            return torch.empty(0, int(self.model.embedding_dim), dtype=torch.float64)
        return torch.stack([self._memo[(prompt, t)] for t in texts]).double()

    def __call__(self, queries: list[str], documents: list[str]) -> torch.Tensor:
        """``[n, m]`` similarities of every (query, document), float64."""
        q, d = self.encode(queries, "query"), self.encode(documents, "document")
        if not queries:
            return torch.empty(0, len(documents), dtype=torch.float64)
        return self.model.similarity(q, d).double()


def hit_score(
    d: torch.Tensor, child_norm: torch.Tensor, parent_norm: torch.Tensor, lam: float
) -> torch.Tensor:
    """HiT's subsumption score ``-(d + lambda (|parent|_h - |child|_h))`` (broadcasting)."""
    return -(d + lam * (parent_norm - child_norm))


def choose_lambda(evaluate: Any) -> tuple[float, list[tuple[float, float]]]:
    """The ``lambda`` of the grid with the best ``evaluate(lambda)`` (ties: the smaller); the grid's top
    doubles while the best sits there (up to :data:`MAX_LAMBDA`). Returns it and every ``(lambda, value)``."""
    values = {lam: evaluate(lam) for lam in BASE_GRID}
    while True:
        best = min(values, key=lambda lam: (-values[lam], lam))
        top = max(values)
        if best < top or top >= MAX_LAMBDA:
            return best, sorted(values.items())
        step = round(top / 10, 6)
        for i in range(1, 11):
            lam = round(top + step * i, 6)
            values[lam] = evaluate(lam)


class Half:
    """One relation's tune or report half: the queries (with qrels), the corpus, and the HiT distances."""

    def __init__(
        self,
        sets: Path,
        relation: str,
        part: str,
        points: Points,
        names: dict[str, str],
        documents: str,
        s_channel: SimilarityChannel | None = None,
    ) -> None:
        data = load_beir(sets / "eval" / relation, part)
        self.relation = relation
        self.qrels = data.qrels
        self.query_ids = [q for q in data.queries if data.qrels.get(q)]
        self.doc_ids = list(data.corpus)
        if documents == "name":
            doc_texts = [names[d] for d in self.doc_ids]
        else:
            doc_texts = [document_text(data.corpus[d]) for d in self.doc_ids]
        ball = points.ball
        q = points([data.queries[i] for i in self.query_ids])
        x = points(doc_texts)
        self.distance = ball.pairwise(q, x) if self.query_ids else torch.empty(0, len(self.doc_ids))
        self.query_norm = ball.norm(q) if self.query_ids else torch.empty(0)
        self.doc_norm = ball.norm(x)
        self.kind = np.array(["name" if q.endswith("#name") else "definition" for q in self.query_ids])
        #: S's similarities ``[queries, documents]`` (float64), when a similarity channel is given.
        self.sims = (
            s_channel([data.queries[i] for i in self.query_ids], doc_texts) if s_channel is not None else None
        )

    def scores(self, lam: float) -> torch.Tensor:
        """HiT's score of every (query, document): broader ranks parents of the query, narrower children."""
        if self.relation == "broader":
            return hit_score(self.distance, self.query_norm[:, None], self.doc_norm[None, :], lam)
        return hit_score(self.distance, self.doc_norm[None, :], self.query_norm[:, None], lam)

    def mixed(self, lam: float, w: float) -> torch.Tensor:
        """S + HiT: ``(1 - w) z(S) + w z(HiT's score at lambda)`` per query; ``w = 0`` is S's similarity."""
        if self.sims is None:
            raise ValueError("no similarity channel was given for this half")
        return mix_scores(self.sims, self.scores(lam), w) if w > 0 else self.sims

    def ndcg(self, scores: torch.Tensor) -> np.ndarray:
        """nDCG@10 x 100 per query of the ranking by ``scores`` (pytrec_eval; stable ties: the earlier
        document); empty without judged queries."""
        if not self.query_ids:
            return np.array([])
        top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :10]
        ranked = {q: [self.doc_ids[p] for p in row] for q, row in zip(self.query_ids, top.tolist())}
        res = compute_metrics({q: self.qrels[q] for q in self.query_ids}, ranked, per_query=True)
        return np.array([100.0 * res["per_query"][q]["ndcg@10"] for q in self.query_ids])

    def per_query(self, lam: float) -> np.ndarray:
        """HiT alone: nDCG@10 x 100 per query."""
        return self.ndcg(self.scores(lam))


def _report(half: Half, values: np.ndarray) -> dict[str, Any]:
    """A report half's mean nDCG@10, by query kind, and per query (``None`` / empty without queries)."""
    return {
        "queries": len(half.query_ids),
        "ndcg@10": float(values.mean()) if values.size else None,
        "by_query_kind": {
            k: float(values[half.kind == k].mean()) if (half.kind == k).any() else None
            for k in ("name", "definition")
        },
        "per_query": dict(zip(half.query_ids, map(float, values))),
    }


def choose_weight(evaluate: Any) -> tuple[float, list[tuple[float, float]]]:
    """The ``w`` of :data:`WEIGHTS` with the best ``evaluate(w)`` (ties: the smaller), and every value."""
    values = {w: evaluate(w) for w in WEIGHTS}
    return min(values, key=lambda w: (-values[w], w)), sorted(values.items())


def with_similarity(tune: Half, report: Half, lam: float) -> dict[str, Any]:
    """The S row and the S + HiT row (HiT at ``lam``, ``w`` from the tune half) of one relation."""
    s_tune, s_report = tune.ndcg(tune.mixed(lam, 0.0)), report.ndcg(report.mixed(lam, 0.0))
    if tune.query_ids:
        w, grid = choose_weight(lambda v: float(tune.ndcg(tune.mixed(lam, v)).mean()))
    else:  # no judged tune query: no choice, S alone
        w, grid = 0.0, []
    mixed = report.ndcg(report.mixed(lam, w))
    diff = paired_bootstrap(mixed[None, :], s_report) if mixed.size else None
    return {
        "S": {
            "tune": {
                "queries": len(tune.query_ids),
                "ndcg@10": float(s_tune.mean()) if s_tune.size else None,
            },
            "report": _report(report, s_report),
        },
        "S + HiT": {
            "lambda": lam,
            "w": w,
            "w_at_edge": bool(grid) and w in (WEIGHTS[0], WEIGHTS[-1]),
            "tune": {"queries": len(tune.query_ids), "ndcg@10": dict(grid).get(w)},
            "report": _report(report, mixed),
            "tune_grid": grid,
            "report_minus_S": diff,
        },
    }


def retrieval(
    sets: Path, points: Points, names: dict[str, str], s_channel: SimilarityChannel | None = None
) -> dict[str, Any]:
    """broader / narrower nDCG@10 x 100 per document kind, ``lambda`` from the tune half; with a similarity
    channel, also the S and S + HiT rows of the definition documents (``with_similarity``)."""
    out: dict[str, Any] = {}
    for relation in RELATIONS:
        for documents in DOCUMENT_KINDS:
            s = s_channel if documents == "definition" else None
            tune, report = (Half(sets, relation, p, points, names, documents, s) for p in PARTS)
            if tune.query_ids:
                lam, grid = choose_lambda(lambda v, half=tune: float(half.per_query(v).mean()))
            else:  # a tiny taxonomy's tune half can be empty: no choice, HiT's distance alone
                lam, grid = 0.0, []
            rep, rep0 = report.per_query(lam), report.per_query(0.0)
            entry = {
                "lambda": lam,
                "lambda_at_zero": bool(grid) and lam == 0.0,
                "lambda_at_top": bool(grid) and lam == grid[-1][0],
                "tune": {"queries": len(tune.query_ids), "ndcg@10": dict(grid).get(lam)},
                "report": {
                    **_report(report, rep),
                    "ndcg@10_lambda0": float(rep0.mean()) if rep0.size else None,
                },
                "corpus": len(report.doc_ids),
                "tune_grid": grid,
                "tune_below_zero": [(v, float(tune.per_query(v).mean())) for v in BELOW_ZERO]
                if grid and lam == 0.0
                else [],
            }
            if s is not None:
                entry["with_similarity"] = with_similarity(tune, report, lam)
            out[f"{relation}/{documents}"] = entry
            print(
                f"{relation} ({documents} documents): lambda {lam}, tune {entry['tune']['ndcg@10']}, "
                f"report {entry['report']['ndcg@10']}",
                file=sys.stderr,
                flush=True,
            )
            if s is not None:
                rows = entry["with_similarity"]
                print(
                    f"  S: report {rows['S']['report']['ndcg@10']}; S + HiT: w {rows['S + HiT']['w']}, "
                    f"tune {rows['S + HiT']['tune']['ndcg@10']}, report {rows['S + HiT']['report']['ndcg@10']}",
                    file=sys.stderr,
                    flush=True,
                )
    return out


def pair_scores(half: dict[str, Any], lam: float) -> np.ndarray:
    """HiT's score of each (child, candidate) pair of one subsumption split."""
    return hit_score(half["d"], half["child"], half["candidate"], lam).numpy()


def subsumption(sets: Path, points: Points, fields: list[str]) -> dict[str, Any]:
    """HiT's subsumption F1 per negative setting and pair field: ``lambda`` and threshold from validation."""
    ball = points.ball
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        for field in fields:
            halves = {}
            for split in ("validation", "test"):
                rows = read_subsumption_pairs(sets / "eval" / "subsumption" / f"{split}.jsonl.gz", setting)
                child = points([str(r[f"child_{field}"]) for r in rows])
                candidate = points([str(r[f"candidate_{field}"]) for r in rows])
                halves[split] = {
                    "d": ball.rowwise(child, candidate),
                    "child": ball.norm(child),
                    "candidate": ball.norm(candidate),
                    "y": np.array([r["label"] for r in rows]),
                }

            val, test = halves["validation"], halves["test"]
            lam, grid = choose_lambda(lambda v, val=val: best_threshold(pair_scores(val, v), val["y"])[1])
            f1 = subsumption_f1(pair_scores(val, lam), val["y"], pair_scores(test, lam), test["y"])
            f1_0 = subsumption_f1(pair_scores(val, 0.0), val["y"], pair_scores(test, 0.0), test["y"])
            out[f"{setting}/{field}"] = {
                "lambda": lam,
                "lambda_at_top": lam == grid[-1][0],
                **f1,
                "f1_lambda0": f1_0["f1"],
                "validation_pairs": int(val["y"].size),
                "test_pairs": int(test["y"].size),
                "validation_grid": grid,
            }
            print(
                f"subsumption {setting}/{field}: lambda {lam}, validation F1 {f1['validation_f1']:.4f}, "
                f"test F1 {f1['f1']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    return out


def _fmt(value: float | None, scale: float = 1.0) -> str:
    return "-" if value is None else f"{scale * value:.2f}"


def _similarity_markdown(result: dict[str, Any]) -> list[str]:
    """The S / HiT / S + HiT table (definition documents), when the similarity channel was scored."""
    channel = result.get("similarity_channel")
    if channel is None:
        return []
    lines = [
        "",
        f"HiT beside a frozen similarity channel S (zero-shot packaged {channel['model']}, {channel['similarity']} "
        "similarity; queries with the `query` prompt, documents with `document`): S + HiT ranks by "
        "`(1 - w) z(S) + w z(HiT)`, each standardised per query over the documents, HiT at its lambda above; "
        "w in 0, 0.1, ..., 1 chosen on the tune half (ties: the smaller); w = 0 is S. Definition documents; "
        "nDCG@10 x 100, and S + HiT - S on the report queries with its paired bootstrap 95% interval:",
        "",
        "| set | row | lambda | w | tune | **report** | report name q | report definition q | report - S [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in result["retrieval"].items():
        rows = entry.get("with_similarity")
        if rows is None:
            continue
        relation = key.split("/")[0]
        for name, row, lam, w in (
            ("S", rows["S"], "-", "-"),
            ("HiT", entry, f"{entry['lambda']:g}", "-"),
            ("S + HiT", rows["S + HiT"], f"{entry['lambda']:g}", f"{rows['S + HiT']['w']:g}"),
        ):
            rep = row["report"]
            diff = row.get("report_minus_S")
            gap = f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]" if diff else "-"
            lines.append(
                f"| {relation} | {name} | {lam} | {w} | {_fmt(row['tune']['ndcg@10'])} | "
                f"**{_fmt(rep['ndcg@10'])}** | {_fmt(rep['by_query_kind']['name'])} | "
                f"{_fmt(rep['by_query_kind']['definition'])} | {gap} |"
            )
    edge = [
        k
        for k, e in result["retrieval"].items()
        if e.get("with_similarity", {}).get("S + HiT", {}).get("w_at_edge")
    ]
    if edge:
        lines += ["", f"S + HiT's w at an end of its grid (0 or 1) for: {', '.join(edge)}."]
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The small report table."""
    run = result["hit_run"]
    training = run["training"]
    lines = [
        "# HiT (Hierarchy Transformers) peer on a taxonomy's sets",
        "",
        f"{result['date']}, commit {result['commit']}; sets `{result['sets']}`.",
        "",
        f"Training (HiT venv): `{run['command']}` — {training['steps']} steps of {run['options']['batch_size']} "
        f"triplets ({run['options']['negatives']} negatives) in {training['train_seconds']:.0f} s "
        f"({training['epochs_done']:.3f} epochs of {run['data']['triplets']} triplets), wall-clock cap "
        f"{run['options']['max_minutes']} min; hierarchy-transformers {run['versions']['hierarchy-transformers']}, "
        f"sentence-transformers {run['versions']['sentence-transformers']}, transformers "
        f"{run['versions']['transformers']}, torch {run['versions']['torch']}; "
        f"{run['machine']['torch_threads']} torch thread(s).",
        "",
        f"Scoring (project venv): `{result['command']}`. Score: HiT's "
        "`-(d(child, parent) + lambda (|parent|_h - |child|_h))` on its Poincaré ball "
        f"(c = {training['curvature']:.6g}); lambda chosen on the tune half (retrieval) or validation "
        "(subsumption).",
        "",
        "Retrieval, nDCG@10 x 100 (report: all queries, then name / definition queries):",
        "",
        "| set | documents | lambda | tune | **report** | report, lambda 0 | report name q | report definition q |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in result["retrieval"].items():
        relation, documents = key.split("/")
        rep = entry["report"]
        lines.append(
            f"| {relation} | {documents}s | {entry['lambda']:g} | {_fmt(entry['tune']['ndcg@10'])} | "
            f"**{_fmt(rep['ndcg@10'])}** | {_fmt(rep['ndcg@10_lambda0'])} | "
            f"{_fmt(rep['by_query_kind']['name'])} | {_fmt(rep['by_query_kind']['definition'])} |"
        )
    lines += _similarity_markdown(result)
    lines += [
        "",
        "Subsumption F1 x 100 on test (HiT's protocol; lambda and threshold maximise validation F1):",
        "",
        "| negatives | pair field | lambda | threshold | validation F1 | **test F1** | precision | recall | "
        "test F1, lambda 0 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in result["subsumption"].items():
        setting, field = key.split("/")
        lines.append(
            f"| {setting} | {field} | {entry['lambda']:g} | {entry['threshold']:.3f} | "
            f"{_fmt(entry['validation_f1'], 100)} | **{_fmt(entry['f1'], 100)}** | "
            f"{_fmt(entry['precision'], 100)} | {_fmt(entry['recall'], 100)} | {_fmt(entry['f1_lambda0'], 100)} |"
        )
    flags = [k for k, e in result["retrieval"].items() if e["lambda_at_top"]]
    flags += [k for k, e in result["subsumption"].items() if e["lambda_at_top"]]
    zero = [k for k, e in result["retrieval"].items() if e["lambda_at_zero"]]
    lines += ["", f"Distance check against geoopt: {result['distance_check']}."]
    for key in zero:
        below = ", ".join(f"{v:g}: {t:.2f}" for v, t in result["retrieval"][key]["tune_below_zero"])
        lines.append(
            f"{key}: lambda = 0, the lower end of HiT's score family (lambda >= 0), is chosen; tune nDCG@10 "
            f"below it (never chosen): {below}."
        )
    if flags:
        lines.append(f"lambda at the top of the grid ({MAX_LAMBDA:g}) for: {', '.join(flags)}.")
    return "\n".join(lines) + "\n"


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "HEAD") + (" (with uncommitted changes)" if git("status", "--porcelain") else "")


def load_s_model() -> Any:
    """The frozen similarity channel's model: the packaged zero-shot all-MiniLM-L6-v2."""
    return lorentz_rag.load_model(S_MODEL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=Path, required=True, help="the `lorentz-rag taxonomy build` folder")
    parser.add_argument("--points", type=Path, required=True, help="run_hit.py's --out folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: --points)")
    parser.add_argument(
        "--no-s-mix",
        action="store_true",
        help=f"skip the S and S + HiT rows (which load and run {S_MODEL})",
    )
    args = parser.parse_args(argv)
    out = args.out or args.points
    points = Points(args.points)
    check = points.check_distance()
    # The raw names, as run_hit.py read them (no normalisation): the points are looked up by text.
    names = {str(r["id"]): str(r["name"]) for _, r in read_jsonl_numbered(args.sets / "train.jsonl.gz")}
    fields = [f for f in FIELDS if f in points.run["options"]["subsumption_fields"]]
    s_channel = None if args.no_s_mix else SimilarityChannel(load_s_model(), S_MODEL)
    scores = retrieval(args.sets, points, names, s_channel)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "sets": str(args.sets),
        "points": str(args.points),
        "distance_check": check,
        "retrieval": scores,
        "similarity_channel": None
        if s_channel is None
        else {
            "model": s_channel.name,
            "similarity": s_channel.similarity,
            "prompts": {"queries": "query", "documents": "document"},
            "weights": list(WEIGHTS),
            "encoded_texts": s_channel.encoded,
            "encode_seconds": s_channel.seconds,
        },
        "subsumption": subsumption(args.sets, points, fields),
        "hit_run": {k: v for k, v in points.run.items() if k != "geoopt_check"},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "hit_scores.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "hit_scores.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
