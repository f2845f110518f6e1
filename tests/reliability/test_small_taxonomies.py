"""Small taxonomies end: ``lorentz-rag taxonomy build`` on 2, 3 or 5 concepts builds its sets or says in one
``error:`` line why it cannot, within a second or two; so does the split the trainer runs
(``taxonomy_args.path``) and the hierarchy objective's sampling on its train split; the subsumption negative
sampler ends for every input; Ctrl-C leaves no partial ``--out`` without a ``manifest.json``. A property test
runs the sampler and the whole set builder over random small DAGs."""

from __future__ import annotations

import gzip
import json
import os
import random
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorentz_rag.cli import main
from lorentz_rag.data import taxonomy_sets
from lorentz_rag.data.taxonomy import Concept, Taxonomy, read_taxonomy, split_taxonomy
from lorentz_rag.data.taxonomy_sets import TaxonomySetOptions, _negatives, build_taxonomy_sets
from lorentz_rag.training.config import load_config
from lorentz_rag.training.hierarchy import TaxonomyHierarchy, hierarchy_triplets
from lorentz_rag.training.taxonomy_recipe import prepare_taxonomy_run

from .conftest import REPO, run_main

TWO_OBO = """format-version: 1.2
ontology: ex

[Term]
id: EX:1
name: animal
def: "a living organism" []

[Term]
id: EX:2
name: dog
def: "a domesticated carnivore" []
synonym: "hound" EXACT []
is_a: EX:1 ! animal
"""


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


SMALL = {
    "two.obo": TWO_OBO,
    "two.jsonl": _jsonl(
        [
            {"id": "A", "name": "animal", "definition": "a living organism"},
            {"id": "B", "name": "dog", "synonyms": ["hound"], "parents": ["A"]},
        ]
    ),
    # a chain A -> B -> C: every train concept is an ancestor of the held-out deepest one
    "chain.jsonl": _jsonl(
        [
            {"id": "A", "name": "animal"},
            {"id": "B", "name": "mammal", "parents": ["A"]},
            {"id": "C", "name": "dog", "parents": ["B"]},
        ]
    ),
    "five.jsonl": _jsonl(
        [
            {"id": "A", "name": "entity"},
            {"id": "B", "name": "animal", "parents": ["A"]},
            {"id": "C", "name": "plant", "parents": ["A"]},
            {"id": "D", "name": "dog", "parents": ["B"]},
            {"id": "E", "name": "tree", "parents": ["C"]},
        ]
    ),
}
ONE_ROOT = _jsonl([{"id": "A", "name": "entity"}])


@pytest.fixture
def small(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, text in {**SMALL, "one.jsonl": ONE_ROOT}.items():
        paths[name] = tmp_path / name
        paths[name].write_text(text, encoding="utf-8")
    return paths


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


# --- the command ----------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("fraction", ["0.1", "0.5", "0.9"])
def test_taxonomy_build_on_a_small_taxonomy_finishes(
    name: str, fraction: str, small: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    start = time.perf_counter()
    status, stdout, stderr = run_main(
        main,
        ["taxonomy", "build", str(small[name]), "--out", str(out), "--held-out-fraction", fraction],
        capsys,
    )
    assert time.perf_counter() - start < 2.0
    assert status == 0, stderr
    assert stderr == "" and "held out" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["held_out"] >= 1 and manifest["train_concepts"] >= 1
    assert _leftovers(tmp_path) == []
    # Every subsumption negative is a train concept that is not an ancestor of its child.
    taxonomy, train = read_taxonomy(small[name]), read_taxonomy(out / "train.jsonl.gz")
    for part in ("validation", "test"):
        for line in gzip.decompress(
            (out / "eval" / "subsumption" / f"{part}.jsonl.gz").read_bytes()
        ).splitlines():
            row = json.loads(line)
            assert row["candidate"] in train
            assert (row["candidate"] in taxonomy.ancestors(row["child"])) == bool(row["label"])


def test_the_chain_gets_only_the_negatives_that_exist(small: dict[str, Path], tmp_path: Path) -> None:
    """A -> B -> C with C held out: both train concepts are its ancestors, so no negative exists."""
    chain = read_taxonomy(small["chain.jsonl"])
    for seed in range(20):  # find a seed that holds out the deepest concept
        if split_taxonomy(chain, seed=seed).held_out == ("C",):
            break
    else:
        pytest.fail("no seed held out 'C'")
    manifest = build_taxonomy_sets(chain, tmp_path / "out", TaxonomySetOptions(seed=seed))
    sub = manifest["subsumption"]
    assert sub["test_positives"] == 4 and sub["test_pairs"] == 4  # A and B, random and hard, no negatives


@pytest.mark.timeout(20)
def test_a_taxonomy_with_nothing_to_hold_out_is_one_error_line(
    small: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    start = time.perf_counter()
    status, _, stderr = run_main(
        main, ["taxonomy", "build", str(small["one.jsonl"]), "--out", str(out)], capsys
    )
    assert time.perf_counter() - start < 2.0
    assert status == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert str(small["one.jsonl"]) in stderr and "no concept with a parent to hold out" in stderr
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_negative_count_is_one_error_line(
    small: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["taxonomy", "build", str(small["five.jsonl"]), "--out", str(tmp_path / "o"), "--negatives", "-1"]
    status, _, stderr = run_main(main, argv, capsys)
    assert status == 2 and stderr.count("\n") == 1 and "--negatives" in stderr


# --- Ctrl-C -----------------------------------------------------------------------------------------------


def test_ctrl_c_while_writing_leaves_no_partial_out(
    small: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(taxonomy_sets, "_subsumption", interrupt)
    out = tmp_path / "out"
    argv = ["taxonomy", "build", str(small["five.jsonl"]), "--out", str(out)]
    status, _, stderr = run_main(main, argv, capsys)
    assert status == 130
    assert stderr == f"interrupted: nothing was written to {out}; rerun the same command\n"
    assert not out.exists() and _leftovers(tmp_path) == []

    # --overwrite of a complete folder: interrupted, the folder is as it was.
    monkeypatch.undo()
    assert run_main(main, argv, capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(taxonomy_sets, "_subsumption", interrupt)
    status, _, stderr = run_main(main, [*argv, "--overwrite", "--seed", "3"], capsys)
    assert status == 130 and "nothing was written" in stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _leftovers(tmp_path) == []


def test_ctrl_c_while_moving_into_a_full_out_leaves_no_manifest(
    small: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    argv = ["taxonomy", "build", str(small["five.jsonl"]), "--out", str(out)]
    assert run_main(main, argv, capsys)[0] == 0
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(taxonomy_sets.os, "replace", replace)
    status, _, stderr = run_main(main, [*argv, "--overwrite"], capsys)
    monkeypatch.undo()
    assert status == 130
    assert (
        stderr
        == f"interrupted: {out} is incomplete (no manifest.json); rerun the same command with --overwrite\n"
    )
    assert not (out / "manifest.json").exists() and _leftovers(tmp_path) == []
    assert run_main(main, [*argv, "--overwrite"], capsys)[0] == 0 and (out / "manifest.json").is_file()


# --- the training path ----------------------------------------------------------------------------------


def _recipe(path: Path, out: Path, general: Path, **extra):
    return load_config(
        REPO / "configs" / "taxonomy" / "single_channel" / "hyte_h.yaml",
        {
            "taxonomy_args.path": str(path),
            "taxonomy_args.replay_path": str(general),
            "train_args.output_dir": str(out),
            **extra,
        },
        dotenv_dir=None,
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("fraction", [0.1, 0.9])
def test_the_trainers_split_and_sampling_end_on_a_small_taxonomy(
    name: str, fraction: float, small: dict[str, Path], tmp_path: Path
) -> None:
    general = tmp_path / "general.jsonl"
    general.write_text(_jsonl([{"query": f"q{i}", "document": f"d{i}"} for i in range(8)]))
    config = _recipe(small[name], tmp_path / "run", general, **{"taxonomy_args.held_out_fraction": fraction})
    start = time.perf_counter()
    prepared = prepare_taxonomy_run(config)
    h = prepared.hierarchy_args
    try:
        hierarchy = TaxonomyHierarchy.from_taxonomy(
            read_taxonomy(h.taxonomy_path), h.max_children, h.pool_seed, name=h.taxonomy_path
        )
    except ValueError as error:  # nothing to sample: said in one line, naming the file
        assert "\n" not in str(error) and h.taxonomy_path in str(error)
        assert "no is-a edges" in str(error) or "no negative to sample" in str(error)
    else:
        for step in range(20):
            texts = hierarchy_triplets(
                hierarchy,
                h.edges_per_step,
                seed=0,
                rank=0,
                step=step,
                micro=0,
                direct_fraction=h.direct_fraction,
                sibling_fraction=h.sibling_fraction,
            )
            assert len(texts) == 3 * h.edges_per_step
    assert time.perf_counter() - start < 2.0


def test_the_trainers_split_of_a_root_only_taxonomy_is_one_error_line(
    small: dict[str, Path], tmp_path: Path
) -> None:
    config = _recipe(small["one.jsonl"], tmp_path / "run", small["two.jsonl"])
    with pytest.raises(ValueError, match="no concept with a parent to hold out") as error:
        prepare_taxonomy_run(config)
    assert "\n" not in str(error.value) and f"taxonomy_args.path={small['one.jsonl']}" in str(error.value)


@pytest.mark.timeout(20)
def test_hierarchy_sampling_never_draws_a_child_without_a_negative() -> None:
    chain = Taxonomy(
        [Concept("A", "a"), Concept("B", "b", parents=("A",)), Concept("C", "c", parents=("B",))]
    )
    h = TaxonomyHierarchy.from_taxonomy(chain)
    a, b, c = (h.ids.index(i) for i in "ABC")
    for sibling_fraction in (0.0, 0.5, 1.0):
        triples = h.sample(random.Random(0), 200, direct_fraction=0.5, sibling_fraction=sibling_fraction)
        assert set(triples) == {(b, a, c)}  # C's edges have no negative: never drawn
    two = Taxonomy([Concept("A", "a"), Concept("B", "b", parents=("A",))])
    with pytest.raises(ValueError, match=r"T\.jsonl: the hierarchy objective has no negative to sample"):
        TaxonomyHierarchy.from_taxonomy(two, name="T.jsonl")
    five = read_taxonomy_rows(SMALL["five.jsonl"])
    with pytest.raises(ValueError, match=r"larger hierarchy_args\.max_children"):
        TaxonomyHierarchy.from_taxonomy(five, max_children=1)
    with pytest.raises(ValueError, match="no is-a edges"):
        TaxonomyHierarchy.from_taxonomy(Taxonomy([Concept("A", "a")]))


def read_taxonomy_rows(text: str) -> Taxonomy:
    rows = [json.loads(line) for line in text.splitlines()]
    return Taxonomy(
        Concept(
            r["id"],
            r["name"],
            r.get("definition", ""),
            tuple(r.get("synonyms", ())),
            tuple(r.get("parents", ())),
        )
        for r in rows
    )


# --- the negative sampler and the set builder over random small inputs ----------------------------------


@pytest.mark.timeout(30)
@settings(max_examples=200, deadline=1000, derandomize=True)
@given(
    pool=st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True),
    excluded=st.sets(st.integers(0, 9)),
    hard_pool=st.lists(st.integers(0, 7), max_size=5, unique=True),
    setting=st.sampled_from(["random", "hard"]),
    n=st.integers(0, 12),
    seed=st.integers(0, 1000),
)
def test_the_negative_sampler_ends_for_every_input(
    pool: list[int], excluded: set[int], hard_pool: list[int], setting: str, n: int, seed: int
) -> None:
    ids = [f"c{i}" for i in pool]
    out = {f"c{i}" for i in excluded}
    hard = [f"c{i}" for i in hard_pool if f"c{i}" not in out]
    picked = _negatives(random.Random(seed), setting, hard, ids, out, n)
    hard_part = min(n, len(hard)) if setting == "hard" else 0
    eligible = [i for i in ids if i not in out]
    assert len(picked) == (n if eligible else hard_part)
    assert not set(picked[hard_part:]) & out and set(picked[hard_part:]) <= set(eligible)


@st.composite
def small_dags(draw: st.DrawFn) -> Taxonomy:
    """1-8 concepts, each with parents among the earlier ones (none: a root); names, definitions and
    synonyms from a small vocabulary, so texts collide with held-out ones."""
    words = ["animal", "dog", "cat", "tree", "plant", ""]
    concepts = []
    for k in range(draw(st.integers(1, 8))):
        parents = draw(st.lists(st.integers(0, k - 1), max_size=3, unique=True)) if k else []
        concepts.append(
            Concept(
                f"c{k}",
                draw(st.sampled_from(words[:-1])),
                draw(st.sampled_from(words)),
                tuple(draw(st.lists(st.sampled_from(words[:-1]), max_size=2, unique=True))),
                tuple(f"c{p}" for p in parents),
            )
        )
    return Taxonomy(concepts)


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=1000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    taxonomy=small_dags(),
    held_out_fraction=st.floats(0.01, 0.99),
    validation_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
    negatives=st.integers(0, 12),
    max_hops=st.integers(0, 4),
    only_some=st.booleans(),
)
def test_the_set_builder_and_the_hierarchy_end_on_small_dags(
    taxonomy: Taxonomy,
    held_out_fraction: float,
    validation_fraction: float,
    seed: int,
    negatives: int,
    max_hops: int,
    only_some: bool,
) -> None:
    options = TaxonomySetOptions(
        seed=seed,
        held_out_fraction=held_out_fraction,
        validation_fraction=validation_fraction,
        negatives=negatives,
        max_hops=max_hops,
        max_queries=5,
        corpus_size=5,
    )
    candidates = list(taxonomy.concepts)[::2] if only_some else None
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        try:
            manifest = build_taxonomy_sets(taxonomy, out, options, candidates=candidates, name="T.jsonl")
        except ValueError as error:
            assert "\n" not in str(error) and str(error).startswith("T.jsonl: ")
            assert not out.exists()
            return
        finally:
            assert _leftovers(Path(folder)) == []
        assert json.loads((out / "manifest.json").read_text()) == manifest
        assert manifest["held_out"] >= 1
        train = read_taxonomy(out / "train.jsonl.gz")
    try:
        hierarchy = TaxonomyHierarchy.from_taxonomy(train, name="train.jsonl.gz")
    except ValueError as error:
        assert "\n" not in str(error) and str(error).startswith("train.jsonl.gz: ")
        return
    triples = hierarchy.sample(random.Random(seed), 16, direct_fraction=0.5, sibling_fraction=0.5)
    assert all(neg != child and neg not in hierarchy.ancestors[child] for child, _, neg in triples)
