"""Hub repo ids in lorentz_rag.load_model (a repo laid out in a temporary Hub cache, offline) and push_to_hub up to
the network call (lorentz_rag.models.hub)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lorentz_rag.models import build_model, load_model, packaged_minilm_path
from lorentz_rag.models.hub import ModelNotAvailableOfflineError, is_hub_id

TINY = {
    "model_type": "hyte_fh",
    "model_name": str(packaged_minilm_path()),
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}
TEXTS = ["a hyperbolic tree", "short"]
MAIN, V2 = "a" * 40, "b" * 40


def _cache_snapshot(cache, repo_id, commit, ref, folder):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    models = []
    for seed, commit, ref in ((0, MAIN, "main"), (1, V2, "v2")):
        torch.manual_seed(seed)
        model = build_model(TINY).eval()
        model.save_pretrained(root / f"saved-{seed}")
        _cache_snapshot(root / "cache", "acme/tiny-hyte", commit, ref, root / f"saved-{seed}")
        models.append(model)
    return root / "cache", models


def test_hub_id_resolves_from_the_cache_with_revisions(hub_cache, monkeypatch):
    cache, (first, second) = hub_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for kwargs, want in (({}, first), ({"revision": "v2"}, second), ({"revision": MAIN}, first)):
        loaded = load_model("acme/tiny-hyte", cache_dir=cache, **kwargs)
        torch.testing.assert_close(loaded.encode(TEXTS), want.encode(TEXTS), atol=0, rtol=0)


def test_offline_and_not_cached_is_a_clear_error(hub_cache, monkeypatch):
    cache, _ = hub_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableOfflineError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        load_model("acme/not-cached", cache_dir=cache)
    with pytest.raises(ModelNotAvailableOfflineError, match="revision 'v3'"):
        load_model("acme/tiny-hyte", cache_dir=cache, revision="v3")


def test_local_paths_are_never_hub_ids(tmp_path):
    assert is_hub_id("org/name") and not is_hub_id("./org/name") and not is_hub_id("/abs/path")
    assert not is_hub_id("a/b/c") and not is_hub_id("name")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="revision"):
        load_model(tmp_path, revision="main")


def test_push_to_hub_uploads_the_saved_folder_with_its_card(monkeypatch):
    from huggingface_hub import HfApi

    torch.manual_seed(0)
    model = build_model(TINY).eval()
    calls = {}

    def fake_create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)

    def fake_upload_folder(self, *, folder_path, repo_id, **kwargs):
        # Everything is in place when the network call would start.
        calls["upload"] = (repo_id, kwargs)
        readme = (Path(folder_path) / "README.md").read_text()
        assert (
            'lorentz_rag.load_model("acme/pushed")' in readme
            and 'SentenceTransformer("acme/pushed"' in readme
        )
        torch.testing.assert_close(load_model(folder_path).encode(TEXTS), model.encode(TEXTS), atol=0, rtol=0)
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    assert model.push_to_hub("acme/pushed", private=True, commit_message="first") == "commit-info"
    assert calls["create"] == ("acme/pushed", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"][0] == "acme/pushed" and calls["upload"][1]["commit_message"] == "first"
    with pytest.raises(ValueError, match="org/name"):
        model.push_to_hub("no-org")
