"""The Hugging Face Hub: ``org/name`` model ids for :func:`lorentz_rag.load_model` and ``push_to_hub``.

A name that is not an existing folder and looks like ``org/name`` is a Hub repo id: it resolves through
``huggingface_hub.snapshot_download`` (``revision``, ``cache_dir`` and ``token`` honoured), which reads the
local cache first. With ``HF_HUB_OFFLINE=1`` only the cache is used, and a model that is not cached is a
clear :class:`ModelNotAvailableOfflineError`, not a network timeout.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from lorentz_rag.models.card import write_model_card
from lorentz_rag.models.hf_base import hub_offline

__all__ = ["ModelNotAvailableOfflineError", "is_hub_id", "push_to_hub", "resolve_model_folder"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class ModelNotAvailableOfflineError(FileNotFoundError):
    """A Hub model id was asked for while offline (``HF_HUB_OFFLINE=1``) and it is not in the cache."""


def is_hub_id(name: str) -> bool:
    """``org/name`` that is not a local path (no ``./``, ``~``, absolute path, or existing file)."""
    return bool(_HUB_ID.match(name)) and not Path(name).exists() and not name.startswith(".")


def resolve_model_folder(
    name: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local folder for ``name``: the folder itself, or the cached snapshot of the Hub repo ``name``."""
    if not is_hub_id(name):
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} applies to Hub repo ids (org/name), not the folder {name!r}"
            )
        return Path(name)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    offline = hub_offline()
    try:
        folder = snapshot_download(
            name, revision=revision, cache_dir=cache_dir, token=token, local_files_only=offline
        )
    except LocalEntryNotFoundError as error:
        where = f"revision {revision!r} of " if revision else ""
        if offline:
            raise ModelNotAvailableOfflineError(
                f"{name!r} is not a local folder, and {where}the Hub model {name!r} is not in the Hugging Face "
                f"cache ({cache_dir or 'HF_HUB_CACHE'}); HF_HUB_OFFLINE=1 forbids downloading it. Download it "
                "once online (unset HF_HUB_OFFLINE), or pass the path of a saved folder"
            ) from None
        raise FileNotFoundError(
            f"{name!r} is not a local folder, and {where}the Hub model could not be downloaded or found in the "
            f"cache: {error}"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{name!r} is neither a local folder nor a Hub model repo you can access (private repos need "
            "HF_TOKEN)"
        ) from None
    return Path(folder)


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload lorentz-rag model",
) -> Any:
    """Save ``model`` (weights, config, sentence-transformers files and a model card that names ``repo_id``)
    to a temporary folder and upload it as one commit; returns ``huggingface_hub``'s commit info."""
    from huggingface_hub import HfApi

    if not _HUB_ID.match(repo_id):
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="lorentz_rag-push-") as folder:
        model.save_pretrained(folder)
        write_model_card(model, folder, repo_id=repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
        )
