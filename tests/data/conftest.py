"""Fixtures for the data tests: mosaicml-streaming importable without torchvision.

streaming 0.13 imports ``torchvision`` at package import (for its vision datasets, which lorentz_rag never uses),
and torchvision cannot be installed next to our CPU torch here. When it is missing, the ``streaming`` fixture
puts a minimal stand-in into ``sys.modules`` for the duration of the test: just the two names streaming's
``vision`` package imports. The library itself imports streaming lazily and never stubs anything.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest


def _torchvision_stub() -> dict[str, types.ModuleType]:
    root = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")

    class VisionDataset:  # streaming subclasses it for image datasets we never build
        pass

    def to_tensor(pic):
        raise NotImplementedError("torchvision stub (tests only): no image support")

    datasets.VisionDataset = VisionDataset
    functional.to_tensor = to_tensor
    root.datasets, root.transforms, transforms.functional = datasets, transforms, functional
    return {
        "torchvision": root,
        "torchvision.datasets": datasets,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


@pytest.fixture
def streaming(monkeypatch):
    """The ``streaming`` package (skips the test when mosaicml-streaming is not installed)."""
    if importlib.util.find_spec("streaming") is None:
        pytest.skip("mosaicml-streaming is not installed (pip install 'lorentz-rag[mds]')")
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        # streaming imports transformers, which probes for torchvision (find_spec) when first imported and
        # caches the answer: import it now so it sees the truth (absent), never the stub.
        import transformers  # noqa: F401

        for name, module in _torchvision_stub().items():
            monkeypatch.setitem(sys.modules, name, module)
    import streaming as module

    return module
