"""The hierarchy channel recipe end to end (``lorentz-rag train --config=configs/taxonomy/hyte_h.yaml``):
the split, the saved two-channel model, the similarity channel unchanged, the weights chosen on validation,
``eval beir --relation`` on the result, and one-line refusals of a bad configuration."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from lorentz_rag import cli
from lorentz_rag.data.beir import write_beir
from lorentz_rag.models import load_model, packaged_minilm_path
from lorentz_rag.models.hierarchy_channel import CHANNEL_FOLDER
from lorentz_rag.training.channel_recipe import WEIGHT_GRID

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "taxonomy" / "hyte_h.yaml"
KINDS = ["animal", "plant", "tool", "vehicle"]
SUBS = ["small", "large", "wild", "domestic"]
LEAVES = ["red", "green", "striped", "spotted"]


def _taxonomy(path: Path) -> Path:
    """A 3-level tree (4 x 4 x 4 leaves) whose names carry their ancestors' words."""
    rows = []
    for k in KINDS:
        rows.append({"id": k, "name": k, "definition": f"any {k}", "parents": []})
        for s in SUBS:
            sid = f"{s}-{k}"
            rows.append({"id": sid, "name": f"{s} {k}", "definition": f"a {k} that is {s}", "parents": [k]})
            for leaf in LEAVES:
                rows.append(
                    {
                        "id": f"{leaf}-{sid}",
                        "name": f"{leaf} {s} {k}",
                        "definition": f"a {s} {k} that is {leaf}",
                        "parents": [sid],
                    }
                )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("channel")
    taxonomy = _taxonomy(tmp / "tree.jsonl")
    out = tmp / "run"
    code = cli.main(
        [
            "train",
            f"--config={CONFIG}",
            f"--taxonomy_args.path={taxonomy}",
            f"--train_args.output_dir={out}",
            "--channel_args.steps=60",
            "--channel_args.batch_size=16",
            "--taxonomy_args.held_out_fraction=0.2",
        ]
    )
    assert code == 0
    return out


def test_the_recipe_saves_a_two_channel_model(trained: Path) -> None:
    final = trained / "final"
    assert (final / CHANNEL_FOLDER / "config.json").is_file()
    assert (trained / "taxonomy" / "train.jsonl.gz").is_file() and (trained / "config.yaml").is_file()
    report = json.loads((trained / "channel_training.json").read_text())
    for relation in ("broader", "narrower"):
        assert report["validation"][relation]["weight"] in WEIGHT_GRID
    assert report["validation"]["broader"]["queries"] > 0
    split = json.loads((trained / "taxonomy" / "split.json").read_text())
    with gzip.open(trained / "taxonomy" / "train.jsonl.gz", "rt") as f:
        train_ids = {json.loads(line)["id"] for line in f}
    assert not set(split["held_out"]) & train_ids
    model = load_model(str(final))
    channel = model.hierarchy_channel
    assert channel is not None and channel.config.dim == 64 and channel.config.geometry == "lorentz"
    assert channel.config.weights == {r: report["validation"][r]["weight"] for r in ("broader", "narrower")}
    assert channel.config.graph_weights == {
        r: report["validation"][r]["graph_weight"] for r in ("broader", "narrower")
    }
    for relation in ("broader", "narrower"):
        v = report["validation"][relation]
        keeps_graph = max(v["graph_grid"].values()) >= max(v["grid"].values())
        assert (relation in channel.config.graph_relations) == keeps_graph
    # The model carries the train split it was taught, embedded: every train concept, no held-out one.
    assert (final / "taxonomy" / "taxonomy.json").is_file()
    assert set(model.concept_graph.concept_ids) == train_ids


def test_similarity_search_ranks_exactly_as_the_frozen_model(trained: Path) -> None:
    two = load_model(str(trained / "final"))
    base = load_model(str(packaged_minilm_path()))
    docs = [f"a {s} {k}" for k in KINDS for s in SUBS]
    queries = ["a red small animal", "large trucks", "wild flowers"]
    assert two.search(queries, docs, k=len(docs)) == base.search(queries, docs, k=len(docs))
    assert torch.equal(two.encode(docs, "document"), base.encode(docs, "document"))


def test_eval_beir_relation_uses_the_channels(trained: Path, tmp_path: Path, capsys) -> None:
    corpus = {f"{s}-{k}": {"title": "", "text": f"a {k} that is {s}"} for k in KINDS for s in SUBS}
    corpus.update({k: {"title": "", "text": f"any {k}"} for k in KINDS})
    queries = {"q1": "a red small animal", "q2": "a green wild plant"}
    qrels = {"q1": {"small-animal": 3, "animal": 2}, "q2": {"wild-plant": 3, "plant": 2}}
    folder = write_beir(tmp_path / "beir", corpus, queries, qrels)
    out = tmp_path / "m.json"
    argv = ["eval", "beir", "--model", str(trained / "final"), "--data", str(folder), "--top-k", "100"]
    assert cli.main([*argv, "--output", str(out), "--relation", "broader"]) == 0
    written = json.loads(out.read_text())
    assert written["meta"]["relation"] == "broader"
    # The model's own taxonomy mixed with H, unless its validation kept broader out of the graph.
    keeps_graph = "broader" in load_model(str(trained / "final")).hierarchy_channel.config.graph_relations
    assert written["meta"]["route"] == ("graph" if keeps_graph else "channel")
    assert written["meta"]["hierarchy_channel"]["dim"] == 64
    printed = capsys.readouterr().out
    assert ("graph-kNN over the model's own taxonomy" in printed) == keeps_graph
    capsys.readouterr()
    assert cli.main([*argv, "--relation", "broader", "--radius-weight", "0.3"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "drop --radius-weight" in errors[0]


@pytest.mark.parametrize(
    "extra, needle",
    [
        ([], "give --taxonomy_args.path=T"),
        (["--taxonomy_args.path=wordnet", "--train_args.max_steps=5"], "channel_args.steps"),
        (["--taxonomy_args.path=wordnet", "--channel_args.geometry=poincare"], "channel_args"),
    ],
)
def test_a_bad_channel_configuration_is_refused(tmp_path: Path, capsys, extra, needle) -> None:
    code = cli.main(["train", f"--config={CONFIG}", f"--train_args.output_dir={tmp_path / 'o'}", *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid training configuration") and needle in err


def test_an_index_of_the_frozen_model_serves_the_two_channel_search(
    trained: Path, tmp_path: Path, capsys
) -> None:
    rows = [{"_id": f"{s}-{k}", "title": "", "text": f"a {k} that is {s}"} for k in KINDS for s in SUBS]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ix"
    assert (
        cli.main(
            [
                "index",
                "build",
                "--model",
                str(packaged_minilm_path()),
                "--corpus",
                str(corpus),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    query = "a red small animal"
    argv = [
        "search",
        "--index",
        str(out),
        query,
        "-k",
        "5",
        "--relation",
        "broader",
        "--model",
        str(trained / "final"),
    ]
    assert cli.main(argv) == 0
    printed = [
        line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()
    ]
    model = load_model(str(trained / "final"))
    want = model.search([query], [r["text"] for r in rows], k=5, relation="broader")[0]
    assert printed == [rows[p]["_id"] for p, _ in want]


def test_faq_dev_and_synonym_rankings_are_the_frozen_models_exactly(trained: Path) -> None:
    from lorentz_rag.data.beir import document_text, load_beir
    from lorentz_rag.data.bundled import faq_dev_path

    data = load_beir(faq_dev_path())
    docs = [document_text(d) for d in data.corpus.values()]
    queries = list(data.queries.values())
    two = load_model(str(trained / "final"))
    base = load_model(str(packaged_minilm_path()))
    assert two.hierarchy_channel is not None
    # Similarity search ignores H: every query's ranking of every document, scores included, is the base's.
    assert two.search(queries, docs, k=len(docs)) == base.search(queries, docs, k=len(docs))
    # A taxonomy's synonym set: each synonym against every concept's definition.
    concepts = [json.loads(line) for line in (ROOT / "tests" / "data" / "fixtures" / "animals.jsonl").open()]
    synonyms = [s for c in concepts for s in c.get("synonyms", [])]
    definitions = [c.get("definition") or c["name"] for c in concepts]
    assert synonyms and two.search(synonyms, definitions, k=len(definitions)) == base.search(
        synonyms, definitions, k=len(definitions)
    )


def test_an_index_of_the_recipes_model_attaches_its_taxonomy(trained: Path, tmp_path: Path, capsys) -> None:
    rows = [
        {"_id": f"doc{i}", "title": "", "text": f"a {k} that is {s}"}
        for i, (k, s) in enumerate((k, s) for k in KINDS for s in SUBS)
    ]
    rows.append(
        {"_id": "free", "title": "", "text": "a fast red car"}
    )  # no concept's text: linked by similarity
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ix"
    final = str(trained / "final")
    assert cli.main(["index", "build", "--model", final, "--corpus", str(corpus), "--out", str(out)]) == 0
    assert "the model's own taxonomy attached" in capsys.readouterr().out
    assert (out / "taxonomy.json").is_file()
    query = "a red small animal"
    assert (
        cli.main(
            ["search", "--index", str(out), query, "-k", "5", "--relation", "narrower", "--model", final]
        )
        == 0
    )
    printed = [
        line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()
    ]
    model = load_model(final)
    ids = [r["_id"] for r in rows]
    want = model.search([query], [r["text"] for r in rows], k=5, relation="narrower", doc_ids=ids)[0]
    assert printed == [ids[p] for p, _ in want]
