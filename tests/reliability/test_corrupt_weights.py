"""A corrupt, truncated or mis-shaped ``model.safetensors`` ends every command that loads
the model with one ``error:`` line naming the file and saying what to do (before: ``SafetensorError: header
too large`` with no file name, or a ``WeightsMismatchError`` traceback)."""

from __future__ import annotations

import shutil

import pytest
import torch

from lorentz_rag import cli, load_model
from lorentz_rag.eval import mteb_adapter

from .conftest import copy_with_weights, run_main


def _broken_copy(tiny_model_dir, tmp_path, content: bytes):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(content)
    return folder


def _corruptions(original: bytes) -> dict[str, bytes]:
    return {
        "truncated": original[: len(original) // 2],
        "header cut": original[:5],
        "garbage": b"\xff" * 256,
        "empty": b"",
        "zeros": b"\0" * 256,
    }


@pytest.mark.parametrize("case", ["truncated", "header cut", "garbage", "empty", "zeros"])
def test_a_corrupt_weights_file_is_one_line_naming_it(case, tiny_model_dir, beir_dir, tmp_path, capsys):
    content = _corruptions((tiny_model_dir / "model.safetensors").read_bytes())[case]
    folder = _broken_copy(tiny_model_dir, tmp_path, content)
    weights = folder / "model.safetensors"
    argv = ["eval", "beir", "--model", str(folder), "--data", str(beir_dir)]
    status, _, err = run_main(cli.main, argv, capsys)
    assert status == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(
        f"error: {weights} is not a readable safetensors file, it is corrupt or truncated ("
    )
    assert err.rstrip().endswith("copy or save the model folder again")
    assert weights.read_bytes() == content  # nothing rewritten


def test_mis_shaped_weights_name_the_tensor_the_file_and_what_to_do(
    tiny_model_dir, beir_dir, tmp_path, capsys
):
    def shrink(tensors: dict[str, torch.Tensor]) -> None:
        name = next(k for k in tensors if "final_norm" in k and k.endswith("weight"))
        tensors[name] = tensors[name][:-1].clone()

    folder = copy_with_weights(tiny_model_dir, tmp_path / "model", shrink)
    for main, argv in [
        (cli.main, ["eval", "beir", "--model", str(folder), "--data", str(beir_dir)]),
        (
            cli.main,
            [
                "index",
                "build",
                "--model",
                str(folder),
                "--corpus",
                str(beir_dir),
                "--out",
                str(tmp_path / "i"),
            ],
        ),
        (
            mteb_adapter.main,
            ["--model", str(folder), "--output_dir", str(tmp_path / "m"), "--beir", str(beir_dir)],
        ),
    ]:
        status, _, err = run_main(main, argv, capsys)
        assert status == 2, err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert err.startswith(
            f"error: weights in {folder / 'model.safetensors'} do not match the model: wrong shape: "
        )
        assert "file has [15], model expects [16]" in err
        assert f"{folder / 'config.json'} describes another model than these weights" in err
    assert not (tmp_path / "i").exists()


def test_the_library_raises_the_same_message(tiny_model_dir, tmp_path):
    folder = _broken_copy(tiny_model_dir, tmp_path, b"\xff" * 64)
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        load_model(folder)
