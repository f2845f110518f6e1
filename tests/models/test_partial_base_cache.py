"""The partial-base state cache (models/hf_base.py): with the top base layers trainable, the frozen lower
layers run text by text and their states are cached per text, so a training run with
``train_args.cache_base_states`` is bit-identical to one without it, for HyTE-H and the Euclidean-distance
twin."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorentz_rag.models import build_model
from lorentz_rag.models.hf_base import cached_base_states, frozen_lower_layers, transformer_layers
from lorentz_rag.training import trainer as trainer_module
from lorentz_rag.training.config import load_config
from lorentz_rag.training.logging import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "quickstart"
TEXTS = [
    "a dog",
    "the quick brown fox jumps over the lazy dog",
    "cat",
    "an organism that breathes through gills",
]
COMMON = {
    "model_name": "all-MiniLM-L6-v2",
    "embedding_dim": 384,
    "projection_init": "identity",
    "query_prefix": "",
    "document_prefix": "",
    "max_seq_length": 32,
}


def _hyte_h(**extra):
    torch.manual_seed(0)
    return build_model({"model_type": "hyte_h", "hyte_h_head": "pooled", **COMMON, **extra})


def test_frozen_lower_layers_counts_only_a_frozen_bottom_under_trainable_top_layers() -> None:
    model = _hyte_h(trainable_base_layers=2)
    assert frozen_lower_layers(model.base) == 4
    model.base.requires_grad_(False)
    assert frozen_lower_layers(model.base) == 0  # wholly frozen: the whole-base cache applies
    model.base.requires_grad_(True)
    assert frozen_lower_layers(model.base) == 0  # wholly trainable
    model = _hyte_h(trainable_base_layers=1)
    model.base.embeddings.word_embeddings.weight.requires_grad_(True)
    assert frozen_lower_layers(model.base) == 0  # a trainable embedding is not a frozen bottom


def test_text_by_text_states_match_the_batched_base_and_the_cache_returns_them_exactly() -> None:
    model = _hyte_h(trainable_base_layers=2)
    model.eval()
    batched = model.encode(TEXTS)  # eval mode, no cache: one batched forward
    model.train()
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        uncached = model(**batch)
        torch.testing.assert_close(uncached, batched, rtol=1e-5, atol=1e-5)
        with cached_base_states() as cache:
            first = model(**batch)
            again = model(**model.tokenize(list(reversed(TEXTS))))
            assert (cache.partial_misses, cache.partial_hits) == (4, 4)
            assert torch.equal(first, uncached)
            # The reversed batch runs the trainable top layers' matmuls with the rows in another order,
            # which the float32 BLAS kernels may round differently; the stored states themselves are exact.
            torch.testing.assert_close(again, uncached.flip(0), rtol=1e-5, atol=1e-6)
            # Training changes only the top layers: the cached lower states stay valid ...
            transformer_layers(model.base)[-1].output.dense.weight.mul_(1.01)
            model(**batch)
            assert cache.partial_misses == 4
            # ... while a change below the trainable layers is never read from stale states.
            model.base.embeddings.word_embeddings.weight.mul_(1.01)
            model(**batch)
            assert cache.partial_misses == 8
        left = {k: v.flip(1) for k, v in batch.items()}
        with pytest.raises(ValueError, match="right-padded"):
            model(**left)


def _run(tmp_path: Path, config: str, out: str, cache: bool, caches: list) -> tuple[dict, list]:
    pairs, nouns = tmp_path / "pairs.jsonl", tmp_path / "nouns.jsonl"
    if not nouns.exists():  # a small WordNet-format tree for the hierarchy objective's glosses
        tree = [
            ("entity", []),
            ("animal", ["entity"]),
            ("dog", ["animal"]),
            ("puppy", ["dog"]),
            ("cat", ["animal"]),
        ]
        rows = [
            {"id": i, "gloss": f"gloss of {i}", "hypernyms": h, "instance_hypernyms": [], "split": "train"}
            for i, h in tree
        ]
        nouns.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not pairs.exists():  # 12 pairs, batch 4, 6 steps: every text is seen twice
        rows = [
            {"query": f"what is thing {i}?", "document": f"thing {i} is a kind of object {i % 3}"}
            for i in range(12)
        ]
        pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = {
        "train_args.max_steps": 6,
        "train_args.batch_size": 4,
        "train_args.warmup_steps": 0,
        "train_args.log_every": 1,
        "train_args.output_dir": str(tmp_path / out),
        "train_args.cache_base_states": cache,
        "data_args.data_path": str(pairs),
        "model_args.max_seq_length": 16,
        "train_args.max_seq_length": 16,
        "model_args.freeze_base": False,
        "model_args.trainable_base_layers": 1,
        "model_args.base_lr_multiplier": 0.5,
        "hierarchy_args.edges_per_step": 4,
        "hierarchy_args.wordnet_path": str(nouns),
    }
    result = trainer_module.train(load_config(CONFIGS / config, overrides, dotenv_dir=None))
    weights = load_file(str(Path(result.final_model_dir) / "model.safetensors"))
    losses = [(r["step"], r["loss"], r.get("hierarchy/triplet")) for r in read_metrics(tmp_path / out)]
    return weights, losses


@pytest.mark.slow
@pytest.mark.parametrize("config", ["hyte_h.yaml", "euclidean_distance.yaml"])
def test_a_run_with_the_partial_base_cache_is_bit_identical_to_one_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str
) -> None:
    caches: list = []

    @contextlib.contextmanager
    def recording(cache=None):
        with cached_base_states(cache) as active:
            caches.append(active)
            yield active

    monkeypatch.setattr(trainer_module, "cached_base_states", recording)
    plain, plain_losses = _run(tmp_path, config, "plain", False, caches)
    assert caches == []
    cached, cached_losses = _run(tmp_path, config, "cached", True, caches)
    (cache,) = caches
    assert (
        cache.partial_hits > 0 and cache.partial_misses > 0
    )  # texts were seen again and read from the cache
    assert len(plain_losses) == 6 and plain_losses == cached_losses  # exactly, every step
    assert plain.keys() == cached.keys()
    assert all(torch.equal(plain[k], cached[k]) for k in plain), [
        k for k in plain if not torch.equal(plain[k], cached[k])
    ]
    # The top base layer trained (the bottom ones did not): the comparison covers trained base weights.
    top = [k for k in plain if ".5." in k and "base" in k]
    assert top and all(plain[k].dtype.is_floating_point for k in top)
