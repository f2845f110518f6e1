"""The hierarchy objective: any taxonomy format read (taxonomy_path), WordNet closure sampling (train split only, negatives never ancestors), the
triplet + centripetal loss, its config section, and a training run that uses it."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import torch

from lorentz_rag.data.taxonomy import read_taxonomy
from lorentz_rag.training.config import load_config
from lorentz_rag.training.hierarchy import (
    HierarchyLoss,
    TaxonomyHierarchy,
    WordNetHierarchy,
    hierarchy_triplets,
    resolve_hierarchy_path,
)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
ANIMALS = FIXTURES / "animals.jsonl"

# entity -> {animal -> {dog -> {puppy}, cat}, plant -> {tree}}; "wolf" is held out (never sampled).
TREE = [
    ("entity", [], "train"),
    ("animal", ["entity"], "train"),
    ("plant", ["entity"], "train"),
    ("dog", ["animal"], "train"),
    ("cat", ["animal"], "train"),
    ("puppy", ["dog"], "train"),
    ("tree", ["plant"], "train"),
    ("wolf", ["animal"], "heldout"),
]


@pytest.fixture
def nouns(tmp_path: Path) -> str:
    path = tmp_path / "nouns.jsonl.gz"
    rows = [
        {"id": i, "gloss": f"gloss of {i}", "hypernyms": h, "instance_hypernyms": [], "split": s}
        for i, h, s in TREE
    ]
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return str(path)


def test_closure_edges_hops_and_held_out_synsets(nouns: str) -> None:
    h = WordNetHierarchy.load(nouns)
    assert "wolf" not in h.ids
    edges = {(h.ids[c], h.ids[a], hops) for c, a, hops in h.edges}
    assert (
        ("puppy", "dog", 1) in edges and ("puppy", "animal", 2) in edges and ("puppy", "entity", 3) in edges
    )
    assert len(edges) == 1 + 1 + 2 + 2 + 3 + 2  # animal, plant, dog, cat, puppy, tree
    assert all(hops == 1 for *_, hops in h.direct_edges)


def test_sampled_negatives_are_never_ancestors_and_siblings_are_siblings(nouns: str) -> None:
    h = WordNetHierarchy.load(nouns)
    triples = h.sample(random.Random(0), 500, direct_fraction=0.5, sibling_fraction=1.0)
    for child, ancestor, negative in triples:
        assert negative != child and negative not in h.ancestors[child]
        if h.parents[ancestor] and any(
            s not in h.ancestors[child] | {child} for g in h.parents[ancestor] for s in h.children[g]
        ):
            # a sibling of the ancestor: a child of one of its hypernyms
            assert any(negative in h.children[g] for g in h.parents[ancestor])
    direct = h.sample(random.Random(1), 200, direct_fraction=1.0, sibling_fraction=0.0)
    assert all(a in h.parents[c] for c, a, _ in direct)


def test_triplets_are_a_pure_function_of_seed_rank_step_and_micro(nouns: str) -> None:
    h = WordNetHierarchy.load(nouns)
    kw = {"direct_fraction": 0.5, "sibling_fraction": 0.5}
    a = hierarchy_triplets(h, 8, seed=1, rank=0, step=3, micro=0, **kw)
    assert a == hierarchy_triplets(h, 8, seed=1, rank=0, step=3, micro=0, **kw) and len(a) == 24
    assert a != hierarchy_triplets(h, 8, seed=1, rank=1, step=3, micro=0, **kw)
    assert a != hierarchy_triplets(h, 8, seed=1, rank=0, step=4, micro=0, **kw)


def test_max_children_bounds_the_texts_a_run_embeds(nouns: str) -> None:
    h = WordNetHierarchy.load(nouns, max_children=2, pool_seed=0)
    assert len({c for c, _, _ in h.edges}) == 2
    assert WordNetHierarchy.load(nouns, max_children=2, pool_seed=0).edges == h.edges


@pytest.mark.parametrize("name", ["animals.jsonl", "animals.obo", "animals.ttl"])
def test_any_taxonomy_format_feeds_the_objective(name: str) -> None:
    h = TaxonomyHierarchy.load(str(FIXTURES / name))
    ids = list(h.ids)
    assert len(ids) == 10 and h.texts[ids.index("EX:0007")] == "sparrow"  # no definition: the name
    assert h.texts[ids.index("EX:0003")].startswith("a warm-blooded vertebrate")
    edges = {(h.ids[c], h.ids[a], hops) for c, a, hops in h.edges}
    assert ("EX:0005", "EX:0008", 1) in edges and ("EX:0005", "EX:0001", 2) in edges
    assert len(edges) == 20  # the closure: 1 + 2 + 2 + 4 + 4 + 3 + 1 + 1 + 2
    assert h == TaxonomyHierarchy.from_taxonomy(read_taxonomy(FIXTURES / name))


def test_taxonomy_path_replaces_wordnet_path(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    base = "train_args: {task: contrastive, max_steps: 1}\nmodel_args: {model_type: hyte_h}\n"
    yaml.write_text(
        base + f"data_args: {{data_path: x.jsonl}}\nhierarchy_args: {{taxonomy_path: {FIXTURES}/a.obo}}\n"
    )
    assert load_config(yaml, dotenv_dir=None).hierarchy_args.taxonomy_path == f"{FIXTURES}/a.obo"
    with pytest.raises(Exception, match=r"taxonomy_path or hierarchy_args\.wordnet_path, not both"):
        load_config(yaml, {"hierarchy_args.wordnet_path": "n.jsonl"}, dotenv_dir=None)
    assert resolve_hierarchy_path(None, None) is None
    assert resolve_hierarchy_path(str(ANIMALS), None) == str(ANIMALS)
    with pytest.raises(FileNotFoundError, match=r"hierarchy_args\.taxonomy_path: no such file"):
        resolve_hierarchy_path(str(tmp_path / "missing.obo"), None)
    with pytest.raises(FileNotFoundError, match=r"hierarchy_args\.wordnet_path: no such file"):
        resolve_hierarchy_path(None, str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("kind", ["geodesic", "euclidean", "cosine"])
def test_loss_is_zero_when_satisfied_and_pulls_ancestors_inward(kind: str) -> None:
    loss = HierarchyLoss(weight=1.0, margin=0.1, centripetal_weight=1.0, centripetal_margin=0.2)
    from lorentz_rag.geometry import lorentz

    def embed(v: torch.Tensor) -> torch.Tensor:
        return lorentz.expmap0(v, 1.0) if kind == "geodesic" else v

    child = torch.tensor([[2.0, 0.1]])
    ancestor = torch.tensor([[1.0, 0.05]])
    negative = torch.tensor([[-2.0, 0.0]])
    e = embed(torch.cat([child, ancestor, negative]))
    radii = torch.tensor([2.0, 1.0, 2.0])
    value, stats = loss(e, radii, kind, 1.0)
    assert float(value) == 0.0 and float(stats["hierarchy/ancestor_inside"]) == 1.0
    # An ancestor outside its child: the centripetal hinge is active and its gradient pulls it inward.
    radii = torch.tensor([1.0, 2.0, 2.0], requires_grad=True)
    value, _ = loss(e, radii, kind, 1.0)
    value.backward()
    assert float(value.detach()) > 0 and radii.grad[1] > 0 and radii.grad[0] < 0
    # A negative closer than the ancestor: the triplet is active.
    bad = embed(torch.cat([child, negative, ancestor]))
    assert float(loss(bad, torch.tensor([2.0, 1.0, 1.0]), kind, 1.0)[1]["hierarchy/triplet"]) > 0


def test_config_section_validates(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text(
        "train_args: {task: mlm, max_steps: 1}\nmodel_args: {model_type: hyte_fh}\n"
        "data_args: {data_path: x.jsonl}\nhierarchy_args: {weight: 1.0}\n"
    )
    with pytest.raises(Exception, match="hierarchy_args is added to the contrastive loss"):
        load_config(yaml, dotenv_dir=None)
    yaml.write_text(
        "train_args: {task: contrastive, max_steps: 1}\nmodel_args: {model_type: hyte_fh}\n"
        "data_args: {data_path: x.jsonl}\nhierarchy_args: {wieght: 1.0}\n"
    )
    with pytest.raises(Exception, match="weight"):
        load_config(yaml, dotenv_dir=None)


def _tiny_hyte_h_run(tmp_path: Path, out: Path, extra: dict) -> dict:
    """Train the quickstart's HyTE-H config for a few tiny steps; returns the final weights."""
    from safetensors.torch import load_file

    from lorentz_rag.training.trainer import train

    pairs = tmp_path / "pairs.jsonl"
    if not pairs.exists():
        pairs.write_text(
            "".join(json.dumps({"query": f"q {i}", "document": f"doc {i} text"}) + "\n" for i in range(64))
        )
    overrides = {
        "train_args.max_steps": 4,
        "train_args.batch_size": 4,
        "train_args.warmup_steps": 0,
        # A constant rate: a run cut after 2 steps then has the schedule of the whole 4-step run.
        "train_args.schedule_type": "constant",
        "train_args.log_every": 1,
        "train_args.output_dir": str(out),
        "data_args.data_path": str(pairs),
        "model_args.max_seq_length": 16,
        "hierarchy_args.edges_per_step": 4,
        "hierarchy_args.max_children": 50,
        **extra,
    }
    config_path = Path(__file__).resolve().parents[2] / "configs" / "quickstart" / "hyte_h.yaml"
    result = train(load_config(config_path, overrides, dotenv_dir=None))
    return load_file(str(Path(result.final_model_dir) / "model.safetensors"))


@pytest.mark.slow
def test_a_training_run_with_the_hierarchy_objective_logs_it_and_resumes_exactly(tmp_path: Path) -> None:
    from lorentz_rag.training.logging import read_metrics

    whole = _tiny_hyte_h_run(tmp_path, tmp_path / "whole", {})
    records = read_metrics(tmp_path / "whole")
    assert all("hierarchy/triplet" in r and "loss/contrastive" in r for r in records)
    _tiny_hyte_h_run(tmp_path, tmp_path / "cut", {"train_args.max_steps": 2, "train_args.save_every": 1})
    resumed = _tiny_hyte_h_run(
        tmp_path,
        tmp_path / "cut",
        {"train_args.checkpoint": str(tmp_path / "cut"), "train_args.overwrite": True},
    )
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.slow
def test_a_training_run_reads_the_hierarchy_from_a_taxonomy_file(tmp_path: Path) -> None:
    from lorentz_rag.training.logging import read_metrics

    extra = {"train_args.max_steps": 2, "hierarchy_args.taxonomy_path": str(FIXTURES / "animals.obo")}
    trained = _tiny_hyte_h_run(tmp_path, tmp_path / "obo", extra)
    assert all("hierarchy/triplet" in r for r in read_metrics(tmp_path / "obo"))
    wordnet = _tiny_hyte_h_run(tmp_path, tmp_path / "wordnet", {"train_args.max_steps": 2})
    assert any(not torch.equal(trained[k], wordnet[k]) for k in trained)  # other edges, other weights


@pytest.mark.slow
def test_grad_cache_with_the_hierarchy_objective_trains_like_the_plain_step(tmp_path: Path) -> None:
    """GradCache runs the hierarchy term as a pass of its own; the weights match the plain path's."""
    from lorentz_rag.training.logging import read_metrics

    plain = _tiny_hyte_h_run(tmp_path, tmp_path / "plain", {"train_args.max_steps": 2})
    cached = _tiny_hyte_h_run(
        tmp_path, tmp_path / "cached", {"train_args.max_steps": 2, "train_args.grad_cache_chunk": 2}
    )
    assert plain.keys() == cached.keys()
    for k in plain:
        torch.testing.assert_close(cached[k], plain[k], rtol=1e-4, atol=1e-5)
    changed = [k for k in plain if k.startswith("head.")]
    assert changed
    records = read_metrics(tmp_path / "cached")
    assert all("hierarchy/triplet" in r and "loss/contrastive" in r for r in records)


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_cone_exterior_angle_is_zero_outward_and_pi_inward_on_the_hyperboloid(c: float) -> None:
    from lorentz_rag.geometry import lorentz
    from lorentz_rag.training.hierarchy import cone_exterior_angle, cone_half_aperture

    u = torch.nn.functional.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1)
    a = lorentz.expmap0(1.0 * u, c)
    further = lorentz.expmap0(2.5 * u, c)
    nearer = lorentz.expmap0(0.3 * u, c)
    across = lorentz.expmap0(
        1.0 * torch.nn.functional.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1), c
    )
    torch.testing.assert_close(
        cone_exterior_angle(a, further, "geodesic", c), torch.zeros(5, dtype=torch.float64), atol=2e-3, rtol=0
    )
    torch.testing.assert_close(
        cone_exterior_angle(a, nearer, "geodesic", c),
        torch.full((5,), torch.pi, dtype=torch.float64),
        atol=2e-3,
        rtol=0,
    )
    angle = cone_exterior_angle(a, across, "geodesic", c)
    assert bool(((angle > 0) & (angle < torch.pi)).all())
    # Cones narrow away from the origin.
    assert bool(
        (cone_half_aperture(further, "geodesic", c, 0.1) < cone_half_aperture(a, "geodesic", c, 0.1)).all()
    )


def test_euclidean_cone_angle_matches_the_elementary_geometry() -> None:
    from lorentz_rag.training.hierarchy import cone_exterior_angle, cone_half_aperture

    a = torch.tensor([[1.0, 0.0]])
    assert float(cone_exterior_angle(a, torch.tensor([[2.0, 0.0]]), "euclidean", None)) == pytest.approx(
        0, abs=2e-3
    )
    assert float(cone_exterior_angle(a, torch.tensor([[1.0, 1.0]]), "euclidean", None)) == pytest.approx(
        torch.pi / 2, abs=1e-4
    )
    assert float(cone_half_aperture(torch.tensor([[0.2, 0.0]]), "euclidean", None, 0.1)) == pytest.approx(
        torch.pi / 6, abs=1e-4
    )


@pytest.mark.parametrize("kind", ["geodesic", "euclidean"])
def test_cone_variant_is_zero_inside_and_positive_outside(kind: str) -> None:
    from lorentz_rag.geometry import lorentz

    loss = HierarchyLoss(weight=1.0, centripetal_weight=0.0, variant="cone", cone_k=0.1)
    embed = (lambda v: lorentz.expmap0(v, 1.0)) if kind == "geodesic" else (lambda v: v)
    ancestor, child, negative = (
        torch.tensor([[0.5, 0.0]]),
        torch.tensor([[2.0, 0.01]]),
        torch.tensor([[-1.0, 1.0]]),
    )
    radii = torch.ones(3)
    good, _ = loss(embed(torch.cat([child, ancestor, negative])), radii, kind, 1.0)
    bad, _ = loss(embed(torch.cat([negative, ancestor, child])), radii, kind, 1.0)
    assert float(good) == pytest.approx(0.0, abs=1e-6) and float(bad) > 0.5
    with pytest.raises(ValueError, match="variant"):
        HierarchyLoss(variant="sphere")
