"""Hierarchy probe: how far from the origin a model puts texts of each hierarchy level (the paper's Fig. 4).

For hyperbolic models the radius is ``d(o, x) = asinh(sqrt(c) |xs|) / sqrt(c)``; for Euclidean models the
Euclidean norm. sentence-transformers models such as all-MiniLM-L6-v2 end with a ``Normalize`` module, so
their output norm is 1 by construction; for those the probe reports the norm *before* that module (the
pooled vector) and says so in ``radius_kind``. Any other Euclidean model whose outputs are all unit vectors
is reported with ``radius_kind = "norm (outputs are normalised: flat by construction)"``.

Texts are embedded as documents (``prompt_type="document"``, the document prefix), as a corpus would be.
Outputs: ``hierarchy.json`` (per level: n, mean, std, quartiles, IQR; the relative increase of the mean
from the first to the last level; Spearman's rank correlation between level and radius), a plot of the
mean radius by level normalised by each model's first-level mean, and 2-D scatter plots coloured by level
(hyperbolic: uncentred PCA of ``logmap0`` tangent vectors, mapped back with ``expmap0`` and drawn in the
Poincare disk; Euclidean: a plain 2-D PCA).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lorentz_rag.data.bundled import wordnet_levels_path
from lorentz_rag.data.jsonl import DataFormatError, read_jsonl_numbered
from lorentz_rag.errors import names_path
from lorentz_rag.geometry import lorentz
from lorentz_rag.models import load_model

__all__ = ["embedding_radii", "hierarchy_probe", "radius_stats", "read_level_rows", "run_hierarchy_command"]

HYPERBOLIC_KIND = "radius d(o, x)"
PRE_NORMALIZATION_KIND = "pre-normalization norm (the model's outputs are unit vectors)"
FLAT_KIND = "norm (outputs are normalised: flat by construction)"


def read_level_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows ``{"level": int, "text": str, ...}`` of a JSONL file; errors name file and line."""
    rows = []
    for lineno, row in read_jsonl_numbered(path):
        level, text = row.get("level"), row.get("text")
        if isinstance(level, bool) or not isinstance(level, int) or not isinstance(text, str):
            raise DataFormatError(f"{path}:{lineno}: a row needs an integer 'level' and a string 'text'")
        rows.append(row)
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return rows


def radius_stats(radii: Tensor, levels: Sequence[int]) -> dict[str, Any]:
    """Per-level statistics of ``radii`` ``[n]`` and the trend over levels.

    Returns ``levels`` (``{level: {n, mean, std, q25, median, q75, iqr}}``, ``std`` with Bessel's
    correction, 0 for a single point), ``relative_increase`` ``(mean_last - mean_first) / mean_first``,
    and ``spearman`` ``{rho, p_value}`` of level against radius over all points.
    """
    from scipy.stats import spearmanr

    r = radii.detach().to(torch.float64).cpu()
    lv = torch.as_tensor(list(levels))
    if r.ndim != 1 or len(r) != len(lv):
        raise ValueError(f"radii {tuple(r.shape)} and levels ({len(lv)}) must be 1-D of equal length")
    per_level: dict[int, dict[str, float]] = {}
    for level in sorted(set(lv.tolist())):
        x = r[lv == level]
        q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        per_level[int(level)] = {
            "n": len(x),
            "mean": float(x.mean()),
            "std": float(x.std()) if len(x) > 1 else 0.0,
            "q25": float(q[0]),
            "median": float(q[1]),
            "q75": float(q[2]),
            "iqr": float(q[2] - q[0]),
        }
    first, last = per_level[min(per_level)]["mean"], per_level[max(per_level)]["mean"]
    if len(per_level) > 1 and float(r.std()) > 0:
        rho, p_value = spearmanr(lv.numpy(), r.numpy())
        spearman = {"rho": float(rho), "p_value": float(p_value)}
    else:
        spearman = {"rho": math.nan, "p_value": math.nan}
    return {
        "levels": per_level,
        "relative_increase": (last - first) / first if first != 0 else math.nan,
        "spearman": spearman,
    }


def _pre_normalization_norms(model: Any, texts: list[str], batch_size: int) -> Tensor | None:
    """Norms before a sentence-transformers ``Normalize`` module, or ``None`` if there is none."""
    st = getattr(model, "st", None)
    if st is None:
        return None
    from sentence_transformers.models import Normalize

    modules = list(st)
    if not any(isinstance(m, Normalize) for m in modules):
        return None
    prefix = model.settings.prefix("document")
    norms = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = [prefix + t for t in texts[start : start + batch_size]]
            # sentence-transformers >= 6 renamed tokenize to preprocess (the old name warns).
            features = st.preprocess(inputs=batch) if hasattr(st, "preprocess") else st.tokenize(batch)
            features = {k: v.to(st.device) if isinstance(v, Tensor) else v for k, v in features.items()}
            for module in modules:
                if isinstance(module, Normalize):
                    continue
                features = module(features)
            norms.append(features["sentence_embedding"].to("cpu", torch.float64).norm(dim=-1))
    return torch.cat(norms)


def embedding_radii(model: Any, texts: Sequence[str], batch_size: int = 32) -> tuple[Tensor, Tensor, str]:
    """Embed ``texts`` as documents: (radii float64 ``[n]``, embeddings ``[n, D]``, what the radius is)."""
    texts = list(texts)
    emb = model.encode(texts, prompt_type="document", batch_size=batch_size)
    if model.is_hyperbolic:
        c = model.curvature()
        return lorentz.radius(emb.to(torch.float64), float(c.detach())), emb, HYPERBOLIC_KIND
    norms = emb.to(torch.float64).norm(dim=-1)
    if torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        pre = _pre_normalization_norms(model, texts, batch_size)
        if pre is not None:
            return pre, emb, PRE_NORMALIZATION_KIND
        return norms, emb, FLAT_KIND
    return norms, emb, "norm"


def _projection_2d(model: Any, emb: Tensor) -> tuple[Tensor, str]:
    """2-D coordinates for the scatter plot ``[n, 2]`` and a caption."""
    x = emb.to(torch.float64)
    if model.is_hyperbolic:
        c = float(model.curvature().detach())
        v = lorentz.logmap0(x, c)
        # Uncentred PCA keeps the origin at the origin, so the radius in the disk still means depth.
        _, _, vh = torch.linalg.svd(v, full_matrices=False)
        v2 = v @ vh[:2].T
        disk = lorentz.to_poincare(lorentz.expmap0(v2, c), c) * math.sqrt(c)  # unit disk
        return disk, "Poincare disk (uncentred PCA of logmap0, expmap0 in 2-D)"
    centred = x - x.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:2].T, "PCA (2-D)"


def _plot(
    results: Mapping[str, Any], projections: Mapping[str, tuple[Tensor, str]], levels, out: Path
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in results.items():
        stats = res["levels"]
        lv = sorted(stats)
        base = stats[lv[0]]["mean"]
        means = [stats[level]["mean"] / base for level in lv]
        spread = [stats[level]["std"] / base for level in lv]
        label = f"{name} ({100 * res['relative_increase']:+.1f}%)"
        ax.errorbar(lv, means, yerr=spread, marker="o", capsize=3, label=label)
    ax.set_xlabel("hierarchy level (1 = general)")
    ax.set_ylabel("mean radius / level-1 mean")
    ax.set_title("Radius by hierarchy level")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "radius_by_level.png", dpi=120)
    plt.close(fig)
    files.append("radius_by_level.png")

    n = len(projections)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4.5), squeeze=False)
    lv_tensor = torch.as_tensor(list(levels))
    for ax, (name, (xy, caption)) in zip(axes[0], projections.items()):
        points = ax.scatter(xy[:, 0].numpy(), xy[:, 1].numpy(), c=lv_tensor.numpy(), cmap="viridis", s=6)
        if caption.startswith("Poincare"):
            ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="gray"))
            ax.set_xlim(-1.05, 1.05)
            ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal")
        ax.set_title(f"{name}\n{caption}", fontsize=8)
        fig.colorbar(points, ax=ax, label="level", shrink=0.8)
    fig.tight_layout()
    fig.savefig(out / "embeddings_2d.png", dpi=120)
    plt.close(fig)
    files.append("embeddings_2d.png")
    return files


def hierarchy_probe(
    models: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Radius statistics by level for each model, ``hierarchy.json`` and two PNG plots in ``out_dir``.

    ``rows``: ``{"level": int, "text": str}``. Returns ``{"models": {name: stats + radius_kind, ...},
    "files": [...]}`` (the stats of :func:`radius_stats`).
    """
    if not models:
        raise ValueError("hierarchy_probe needs at least one model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [str(r["text"]) for r in rows]
    levels = [int(r["level"]) for r in rows]
    results: dict[str, Any] = {}
    projections: dict[str, tuple[Tensor, str]] = {}
    for name, model in models.items():
        radii, emb, kind = embedding_radii(model, texts, batch_size)
        stats = radius_stats(radii, levels)
        stats["radius_kind"] = kind
        stats["similarity"] = model.settings.similarity
        if model.is_hyperbolic:
            stats["curvature"] = float(model.curvature().detach())
        results[name] = stats
        projections[name] = _projection_2d(model, emb)
    with names_path(out):  # a full disk names the folder
        files = _plot(results, projections, levels, out)
    summary = {"models": results, "n_rows": len(rows), "files": files, "prompt_type": "document"}
    with names_path(out / "hierarchy.json"):
        (out / "hierarchy.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def run_hierarchy_command(
    model_paths: Sequence[str], data: str | None, output: str, *, batch_size: int = 32
) -> dict[str, Any]:
    """``lorentz-rag eval hierarchy``: load each model folder, probe, print a table."""
    path = data or wordnet_levels_path()
    rows = read_level_rows(path)
    models: dict[str, Any] = {}
    for model_path in model_paths:
        folder = Path(model_path).resolve()
        # A folder called just "model" (the packaged MiniLM) is named by its parent too.
        name = f"{folder.parent.name}/{folder.name}" if folder.name in ("model", "final") else folder.name
        while name in models:
            name += "'"
        models[name] = load_model(model_path)
    summary = hierarchy_probe(models, rows, output, batch_size=batch_size)
    for name, res in summary["models"].items():
        print(f"{name}: {res['radius_kind']}")
        for level, st in res["levels"].items():
            print(
                f"  level {level}: mean {st['mean']:.4f}  std {st['std']:.4f}  IQR {st['iqr']:.4f}  (n={st['n']})"
            )
        rho = res["spearman"]["rho"]
        print(f"  first -> last level: {100 * res['relative_increase']:+.2f}%   Spearman rho {rho:.3f}")
    print(f"wrote {Path(output) / 'hierarchy.json'} and {', '.join(summary['files'])}")
    return summary
