"""Test environment: offline, with every cache inside pytest's temporary space."""

from __future__ import annotations

import os
import tempfile

# One cache root for the whole run: pytest-xdist's workers inherit it from the controlling process, so they
# share what is slow to build once (DeepSpeed's CPU op, compiled into TORCH_EXTENSIONS_DIR under a file lock).
_CACHE_ROOT = os.environ.get("LORENTZ_RAG_TEST_CACHE") or tempfile.mkdtemp(prefix="lorentz_rag-test-cache-")
os.environ["LORENTZ_RAG_TEST_CACHE"] = _CACHE_ROOT
for _var, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HOME": os.path.join(_CACHE_ROOT, "hf"),
    "HF_DATASETS_CACHE": os.path.join(_CACHE_ROOT, "hf", "datasets"),
    "MTEB_CACHE": os.path.join(_CACHE_ROOT, "mteb"),
    "WANDB_DIR": os.path.join(_CACHE_ROOT, "wandb"),
    "TORCH_EXTENSIONS_DIR": os.path.join(_CACHE_ROOT, "torch_extensions"),
    # torch.compile's caches too: every run compiles from cold, as on a fresh machine.
    "TORCHINDUCTOR_CACHE_DIR": os.path.join(_CACHE_ROOT, "torchinductor"),
    "TRITON_CACHE_DIR": os.path.join(_CACHE_ROOT, "triton"),
    "MPLBACKEND": "Agg",
}.items():
    os.environ[_var] = _value
