"""The taxonomy recipe: ``taxonomy_args`` derives the run's mixture and hierarchy edges from the taxonomy's
train split (the same split as ``taxonomy build``), held-out concepts never reach training, and
``configs/taxonomy/single_channel/*.yaml`` train HyTE-H and the twin end to end into ``OUT/final``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lorentz_rag.data.taxonomy import read_taxonomy
from lorentz_rag.data.taxonomy_sets import TaxonomySetOptions, build_taxonomy_sets
from lorentz_rag.training.config import ConfigError, load_config
from lorentz_rag.training.hierarchy import WordNetHierarchy
from lorentz_rag.training.taxonomy_recipe import prepare_taxonomy_run

ROOT = Path(__file__).resolve().parents[2]
ANIMALS = ROOT / "tests" / "data" / "fixtures" / "animals.jsonl"


def _general(tmp_path: Path, held_text: str) -> Path:
    """General pairs, one of which names a held-out concept's text (it must be dropped)."""
    path = tmp_path / "general.jsonl"
    rows = [{"query": f"general question {i}", "document": f"general answer {i}"} for i in range(40)]
    rows.append({"query": "leaky", "document": held_text})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp_path: Path, config: str = "hyte_h.yaml", **extra):
    taxonomy = read_taxonomy(ANIMALS)
    probe = prepare_taxonomy_run(
        load_config(
            ROOT / "configs" / "taxonomy" / "single_channel" / config,
            {"taxonomy_args.path": str(ANIMALS), "train_args.output_dir": str(tmp_path / "probe"), **extra},
            dotenv_dir=None,
        )
    )
    held = json.loads((tmp_path / "probe" / "taxonomy" / "split.json").read_text())["held_out"]
    general = _general(tmp_path, taxonomy[held[0]].definition or taxonomy[held[0]].name)
    overrides = {
        "taxonomy_args.path": str(ANIMALS),
        "taxonomy_args.replay_path": str(general),
        "train_args.output_dir": str(tmp_path / "out"),
        **extra,
    }
    assert probe.taxonomy_args.path == str(ANIMALS)
    return load_config(
        ROOT / "configs" / "taxonomy" / "single_channel" / config, overrides, dotenv_dir=None
    ), held


def test_the_run_trains_on_the_train_split_only_and_matches_taxonomy_build(tmp_path: Path) -> None:
    config, _ = _config(tmp_path, **{"taxonomy_args.held_out_fraction": 0.2})
    prepared = prepare_taxonomy_run(config)
    folder = tmp_path / "out" / "taxonomy"
    assert prepared.data_args.data_path == str(folder / "pairs.jsonl")
    assert prepared.hierarchy_args.taxonomy_path == str(folder / "train.jsonl.gz")
    assert config.data_args.data_path != prepared.data_args.data_path  # the input config is not changed

    # The same split and pairs as `lorentz-rag taxonomy build` with the same settings.
    built = tmp_path / "built"
    build_taxonomy_sets(read_taxonomy(ANIMALS), built, TaxonomySetOptions(held_out_fraction=0.2))
    assert read_taxonomy(folder / "train.jsonl.gz") == read_taxonomy(built / "train.jsonl.gz")
    split = json.loads((folder / "split.json").read_text())
    assert split["held_out"] == json.loads((built / "split.json").read_text())["held_out"]
    with gzip.open(built / "pairs.jsonl.gz", "rt") as handle:
        built_pairs = {json.dumps(json.loads(line), sort_keys=True) for line in handle}
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    ours = {json.dumps(r, sort_keys=True) for r in rows}
    assert built_pairs <= ours and len(built_pairs) == split["taxonomy_pairs"]
    # Replay: as many general pairs as taxonomy pairs, broader ones included (share 0.5), the leaky one dropped.
    assert split["broader_pairs"] > 0  # the configs' broader_pairs
    assert (
        split["replay_pairs"] == split["taxonomy_pairs"] + split["broader_pairs"]
        and split["replay_pairs_dropped_for_held_out_text"] == 1
    )

    # Held-out concepts never reach training: no text of theirs in the mixture or in the hierarchy's texts.
    taxonomy = read_taxonomy(ANIMALS)
    held_texts = {
        t.casefold()
        for i in split["held_out"]
        for t in (taxonomy[i].name, *taxonomy[i].synonyms, taxonomy[i].definition)
        if t
    }
    assert held_texts and not any(
        r["query"].casefold() in held_texts or r["document"].casefold() in held_texts for r in rows
    )
    hierarchy = WordNetHierarchy.load(prepared.hierarchy_args.taxonomy_path)
    assert not set(hierarchy.ids) & set(split["held_out"])
    assert not {t.casefold() for t in hierarchy.texts} & held_texts
    assert (
        prepare_taxonomy_run(prepared).data_args.data_path == prepared.data_args.data_path
    )  # a resume: the same


def test_taxonomy_args_are_validated(tmp_path: Path) -> None:
    config = ROOT / "configs" / "taxonomy" / "single_channel" / "hyte_h.yaml"
    with pytest.raises(ConfigError, match=r"leave hierarchy_args\.taxonomy_path"):
        load_config(
            config,
            {"taxonomy_args.path": str(ANIMALS), "hierarchy_args.taxonomy_path": str(ANIMALS)},
            dotenv_dir=None,
        )
    with pytest.raises(ConfigError, match="replay_share"):
        load_config(config, {"taxonomy_args.replay_share": 1.0}, dotenv_dir=None)
    with pytest.raises(ConfigError, match=r"did you mean 'taxonomy_args\.replay_share'"):
        load_config(config, {"taxonomy_args.replay_shar": 0.2}, dotenv_dir=None)
    off = load_config(config, {}, dotenv_dir=None)
    assert prepare_taxonomy_run(off) is off  # no path: no change
    empty = load_config(
        config,
        {
            "taxonomy_args.path": str(ANIMALS),
            "taxonomy_args.use_pairs": False,
            "taxonomy_args.broader_pairs": 0,
            "taxonomy_args.replay_share": 0.0,
            "train_args.output_dir": str(tmp_path / "o"),
        },
        dotenv_dir=None,
    )
    with pytest.raises(ValueError, match="the mixture is empty"):
        prepare_taxonomy_run(empty)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["hyte_h.yaml", "euclidean_distance.yaml"])
def test_the_recipe_configs_train_a_model_end_to_end(tmp_path: Path, config: str) -> None:
    from lorentz_rag import load_model
    from lorentz_rag.cli import main

    _config(tmp_path, config)  # writes general.jsonl
    out = tmp_path / "run"
    argv = [
        "train",
        f"--config={ROOT / 'configs' / 'taxonomy' / 'single_channel' / config}",
        f"--taxonomy_args.path={ANIMALS}",
        f"--taxonomy_args.replay_path={tmp_path / 'general.jsonl'}",
        f"--train_args.output_dir={out}",
        "--train_args.max_steps=3",
        "--train_args.batch_size=4",
        "--train_args.warmup_steps=0",
        "--model_args.max_seq_length=24",
        "--train_args.max_seq_length=16",
        "--hierarchy_args.edges_per_step=4",
    ]
    assert main(argv) == 0
    model = load_model(out / "final")
    assert model.settings.max_seq_length == 24  # trained on 16 tokens, reads 24 (the configs: 64 and 256)
    # The configs' choice (tune halves): the whole base frozen, only the head trains.
    assert model.trainable_base_layers == 0 and model.settings.similarity in ("geodesic", "euclidean")
    assert not any(p.requires_grad for p in model.base.parameters())
    saved = (out / "config.yaml").read_text()
    assert (
        str(out / "taxonomy" / "pairs.jsonl") in saved and str(out / "taxonomy" / "train.jsonl.gz") in saved
    )
    hits = model.search(
        ["a domesticated carnivorous mammal"], ["animal", "dog", "rose"], k=3, relation="broader"
    )
    assert len(hits[0]) == 3


def test_broader_pairs_join_the_mixture_from_the_train_split_only(tmp_path: Path) -> None:
    config, _ = _config(
        tmp_path,
        **{
            "taxonomy_args.held_out_fraction": 0.2,
            "taxonomy_args.broader_pairs": 15,
            "taxonomy_args.broader_max_hops": 2,
        },
    )
    prepare_taxonomy_run(config)
    folder = tmp_path / "out" / "taxonomy"
    split = json.loads((folder / "split.json").read_text())
    train = read_taxonomy(folder / "train.jsonl.gz")
    # child (name or text) -> the text of one of its ancestors within 2 hops, in the train split
    expected = {
        (q, train[a].text)
        for c in train
        for a, hops in train.ancestors(c.id).items()
        if hops <= 2
        for q in (c.name, c.text)
    }
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    broader = [r for r in rows if (r["query"], r["document"]) in expected]
    assert 0 < split["broader_pairs"] <= 15
    assert len(broader) >= split["broader_pairs"]
    held = {read_taxonomy(ANIMALS)[i].text.casefold() for i in split["held_out"]}
    assert not any(r["document"].casefold() in held or r["query"].casefold() in held for r in broader)
    # broader_pairs 0: none
    default, _ = _config(
        tmp_path / "default", **{"taxonomy_args.held_out_fraction": 0.2, "taxonomy_args.broader_pairs": 0}
    )
    prepare_taxonomy_run(default)
    assert (
        json.loads((tmp_path / "default" / "out" / "taxonomy" / "split.json").read_text())["broader_pairs"]
        == 0
    )
