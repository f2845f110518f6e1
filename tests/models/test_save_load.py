"""Saving and loading: identical outputs after a round trip, strict weight checks, init_from MLM folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lorentz_rag
from lorentz_rag.models import (
    WeightsMismatchError,
    build_mlm_model,
    build_model,
    load_mlm_model,
    load_model,
    packaged_minilm_path,
    save_mlm_model,
)

MINILM = str(packaged_minilm_path())
TINY = {"model_name": MINILM, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
TEXTS = ["Lorentz model of hyperbolic space", "short", "the saved folder must not depend on the base path"]


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Move every parameter off its initial value, so a load that silently skips weights is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))


def _round_trip(model, path):
    model.save_pretrained(path)
    loaded = load_model(path)
    assert type(loaded) is type(model)
    for prompt in ("query", "document"):
        torch.testing.assert_close(loaded.encode(TEXTS, prompt), model.encode(TEXTS, prompt), atol=0, rtol=0)
    return loaded


@pytest.mark.parametrize(
    "args",
    [
        {"model_type": "hyte_fh", "pooling": "outward_einstein_midpoint", "pooling_p": 2.0, **TINY},
        {"model_type": "euclidean", "pooling": "cls", **TINY},
        {"model_type": "euclidean", "euclidean_base": "pretrained", "model_name": MINILM, "embedding_dim": 8},
    ],
    ids=["hyte_fh", "euclidean_modernbert", "euclidean_pretrained"],
)
def test_round_trip_gives_identical_embeddings(tmp_path, args):
    torch.manual_seed(0)
    model = build_model({**args, "query_prefix": "q: ", "document_prefix": "d: "}).eval()
    _perturb(model)
    loaded = _round_trip(model, tmp_path / "saved")
    assert loaded.settings == model.settings
    assert (loaded.settings.query_prefix, loaded.settings.pooling_p) == ("q: ", args.get("pooling_p", 1.0))


def test_hyte_h_round_trip_does_not_depend_on_the_base_folder(tmp_path):
    base_copy = tmp_path / "base"
    shutil.copytree(MINILM, base_copy)
    torch.manual_seed(0)
    model = build_model(
        {
            "model_type": "hyte_h",
            "model_name": str(base_copy),
            "embedding_dim": 16,
            "curvature": 2.0,
            "num_hyperbolic_blocks": 1,
            "num_attention_heads": 2,
            "pooling": "mean_tangent",
            "max_seq_length": 48,
        }
    ).eval()
    _perturb(model)
    with torch.no_grad():
        model.curvature_module.log_c.fill_(0.3)
    model.save_pretrained(tmp_path / "saved")
    shutil.rmtree(base_copy)  # the saved folder carries the base's config, weights and tokenizer
    loaded = load_model(tmp_path / "saved")
    torch.testing.assert_close(loaded.encode(TEXTS, "query"), model.encode(TEXTS, "query"), atol=0, rtol=0)
    section = json.loads((tmp_path / "saved" / "config.json").read_text())["lorentz_rag"]
    assert section["model_type"] == "hyte_h"
    assert section["pooling"] == "mean_tangent" and section["similarity"] == "geodesic"
    assert section["curvature"] == pytest.approx(float(torch.tensor(0.3).exp()))
    assert section["query_prefix"] == "search_query: " and section["max_seq_length"] == 48
    assert section["library_version"] == lorentz_rag.__version__
    assert section["base_config"]["hidden_size"] == 384 and section["projection_dim"] == 16
    assert {"tokenizer.json", "model.safetensors"} <= {p.name for p in (tmp_path / "saved").iterdir()}
    assert any(
        k.startswith("base.encoder.layer.5.") for k in load_file(tmp_path / "saved" / "model.safetensors")
    )


def test_sentence_transformers_round_trip_keeps_prefixes(tmp_path):
    model = load_model(MINILM)
    model.settings.query_prefix = "query: "
    loaded = _round_trip(model, tmp_path / "st")
    assert loaded.settings.query_prefix == "query: " and loaded.settings.document_prefix == ""
    assert (tmp_path / "st" / "modules.json").is_file()  # still a sentence-transformers folder


@pytest.fixture(scope="module")
def saved_hyte_fh(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hyte_fh")
    build_model({"model_type": "hyte_fh", **TINY}).save_pretrained(path)
    return path


def _edit_weights(src, dst, edit) -> None:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor_is_named(saved_hyte_fh, tmp_path):
    _edit_weights(saved_hyte_fh, tmp_path / "m", lambda t: t.pop("model.layers.1.mlp.wo.weight"))
    with pytest.raises(WeightsMismatchError, match=r"missing \(1\): model\.layers\.1\.mlp\.wo\.weight"):
        load_model(tmp_path / "m")


def test_unexpected_tensor_is_named(saved_hyte_fh, tmp_path):
    _edit_weights(saved_hyte_fh, tmp_path / "u", lambda t: t.update({"model.extra.weight": torch.zeros(2)}))
    with pytest.raises(WeightsMismatchError, match=r"unexpected \(1\): model\.extra\.weight"):
        load_model(tmp_path / "u")


def test_misshaped_tensor_is_named(saved_hyte_fh, tmp_path):
    def shrink(t):
        t["model.final_norm.weight"] = torch.ones(31)

    _edit_weights(saved_hyte_fh, tmp_path / "s", shrink)
    with pytest.raises(
        WeightsMismatchError, match=r"model\.final_norm\.weight: file has \[31\], model expects \[32\]"
    ):
        load_model(tmp_path / "s")


def test_not_a_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="neither a lorentz-rag model folder"):
        load_model(tmp_path)


# --- MLM folders and init_from ----------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["hyte_fh", "euclidean"])
def test_init_from_loads_the_mlm_trunk_exactly(tmp_path, model_type):
    torch.manual_seed(0)
    mlm = build_mlm_model({"model_type": model_type, **TINY})
    _perturb(mlm, seed=3)
    save_mlm_model(mlm, tmp_path / "mlm")
    with pytest.raises(ValueError, match="holds an MLM model"):
        load_model(tmp_path / "mlm")

    torch.manual_seed(123)  # a different random init, so only an explicit load can make them equal
    model = build_model({"model_type": model_type, "init_from": str(tmp_path / "mlm"), **TINY})
    trunk = mlm.model.state_dict()
    loaded = model.model.state_dict()
    assert set(trunk) == set(loaded)
    for name, tensor in trunk.items():
        assert torch.equal(loaded[name], tensor), name

    reloaded = load_mlm_model(tmp_path / "mlm")
    batch = mlm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(batch["input_ids"], batch["attention_mask"], labels=labels).logits,
            mlm(batch["input_ids"], batch["attention_mask"], labels=labels).logits,
            atol=0,
            rtol=0,
        )


def test_tied_mlm_weights_are_written_once_and_stay_tied(tmp_path):
    torch.manual_seed(0)
    mlm = build_mlm_model({"model_type": "euclidean", **TINY})
    mlm.save_pretrained(tmp_path / "mlm")
    assert "decoder.weight" not in load_file(tmp_path / "mlm" / "model.safetensors")
    reloaded = load_mlm_model(tmp_path / "mlm")
    assert reloaded.decoder.weight.data_ptr() == reloaded.model.embeddings.tok_embeddings.weight.data_ptr()
    assert torch.equal(reloaded.decoder.weight, mlm.decoder.weight)


def test_tied_hyte_fh_mlm_head_round_trip(tmp_path):
    """model_args.tie_mlm_head: head.z is the embedding table, written once, tied again after loading,
    identical loss and logits; init_from continues it only with the same setting; the embedding model
    built from the folder loads the (trained) table as its embeddings."""
    torch.manual_seed(0)
    mlm = build_mlm_model({"model_type": "hyte_fh", "tie_mlm_head": True, **TINY})
    assert mlm.head.z is mlm.model.embeddings.weight
    _perturb(mlm, seed=4)
    save_mlm_model(mlm, tmp_path / "mlm")
    stored = load_file(tmp_path / "mlm" / "model.safetensors")
    assert "head.z" not in stored and "model.embeddings.weight" in stored and "head.a" in stored
    reloaded = load_mlm_model(tmp_path / "mlm")
    assert reloaded.config.tie_mlm_head and reloaded.head.z is reloaded.model.embeddings.weight
    batch = mlm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)
    with torch.no_grad():
        want = mlm(batch["input_ids"], batch["attention_mask"], labels=labels)
        got = reloaded(batch["input_ids"], batch["attention_mask"], labels=labels)
        torch.testing.assert_close(got.loss, want.loss, atol=0, rtol=0)
        torch.testing.assert_close(got.logits, want.logits, atol=0, rtol=0)

    again = build_mlm_model(
        {"model_type": "hyte_fh", "tie_mlm_head": True, "init_from": str(tmp_path / "mlm"), **TINY}
    )
    assert again.head.z is again.model.embeddings.weight and torch.equal(again.head.z, mlm.head.z)
    with pytest.raises(ValueError, match=r"tie_mlm_head=False disagrees with init_from=.*tie_mlm_head=True"):
        build_mlm_model({"model_type": "hyte_fh", "init_from": str(tmp_path / "mlm"), **TINY})
    encoder = build_model({"model_type": "hyte_fh", "init_from": str(tmp_path / "mlm"), **TINY})
    assert torch.equal(encoder.model.embeddings.weight, mlm.model.embeddings.weight)


def test_init_from_mismatch_fails_loudly(tmp_path):
    torch.manual_seed(0)
    mlm = build_mlm_model({"model_type": "hyte_fh", **TINY})
    save_mlm_model(mlm, tmp_path / "mlm")
    with pytest.raises(ValueError, match=r"model_args.hidden_size=64 disagrees with init_from"):
        build_model(
            {"model_type": "hyte_fh", "init_from": str(tmp_path / "mlm"), **{**TINY, "hidden_size": 64}}
        )
    with pytest.raises(ValueError, match="can start from 'euclidean_mlm'"):
        build_model({"model_type": "euclidean", "init_from": str(tmp_path / "mlm"), **TINY})

    _edit_weights(tmp_path / "mlm", tmp_path / "broken", lambda t: t.pop("model.layers.0.attn.wo.weight"))
    with pytest.raises(WeightsMismatchError, match=r"missing \(1\): layers\.0\.attn\.wo\.weight"):
        build_model({"model_type": "hyte_fh", "init_from": str(tmp_path / "broken"), **TINY})


def _as_saved_before_the_rename(folder) -> None:
    """Rewrite a saved folder the way the library wrote it when the package was called ``hyprag``: the
    ``hyprag`` config section, the ``hyprag_aliases`` safetensors key and ``hyprag.`` module paths."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["hyprag"] = config.pop("lorentz_rag")
    config_file.write_text(json.dumps(config))
    weights = folder / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(weights)
    meta["hyprag_aliases"] = meta.pop("lorentz_rag_aliases")
    save_file(tensors, str(weights), metadata=meta)
    for name in ("modules.json", "router_config.json"):
        for file in folder.rglob(name):
            file.write_text(
                file.read_text().replace("lorentz_rag.", "hyprag.").replace("LorentzRag", "Hyprag")
            )


@pytest.mark.parametrize(
    ("args", "mlm"),
    [({"model_type": "hyte_fh", **TINY}, False), ({"model_type": "euclidean", **TINY}, True)],
    ids=["hyte_fh", "euclidean_mlm_tied"],
)
def test_folders_saved_under_the_old_package_name_keep_loading(tmp_path, args, mlm):
    torch.manual_seed(0)
    model = (build_mlm_model if mlm else build_model)(args).eval()
    _perturb(model)
    folder = tmp_path / "saved"
    (save_mlm_model(model, folder) if mlm else model.save_pretrained(folder))
    _as_saved_before_the_rename(folder)
    assert "lorentz_rag" not in (folder / "config.json").read_text()
    loaded = (load_mlm_model if mlm else load_model)(folder)
    for (name, want), got in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(got, want, atol=0, rtol=0, msg=name)
