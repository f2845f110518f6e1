"""The shared boundary: the third-party exceptions users cause (a corrupt safetensors file, a full
disk, a read-only or forbidden path, invalid JSON, Ctrl-C) end every entry point with one line, exit status
2 (130 for Ctrl-C), ``--debug`` keeping the traceback."""

from __future__ import annotations

import errno
import json
import os
import re
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorentz_rag import cli
from lorentz_rag.errors import (
    EXIT_INTERRUPTED,
    Interrupted,
    describe_error,
    names_path,
    on_interrupt,
    read_json_file,
    run_entry_point,
)


def _raising(error: BaseException):
    def main(argv: list[str]) -> int:
        raise error

    return main


def _run(error: BaseException, capsys, argv: list[str] | None = None) -> tuple[int, str]:
    status = run_entry_point(_raising(error), argv or [])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, "no space left on device: free space or write to another disk, then rerun"),
        (errno.EROFS, "Read-only file system: the file system is read-only: choose a writable folder"),
        (errno.EACCES, "Permission denied: check its permissions or choose another path"),
        (errno.EPERM, "Operation not permitted: check its permissions or choose another path"),
    ],
)
def test_os_errors_name_the_path_and_say_what_to_do(code, expected, capsys):
    status, err = _run(OSError(code, os.strerror(code), "/runs/a/ckpt-3.tmp"), capsys)
    assert status == 2
    assert err == f"error: /runs/a/ckpt-3.tmp: {expected}\n"


def test_a_failed_rename_names_both_paths(capsys):
    error = OSError(errno.EACCES, os.strerror(errno.EACCES), "/runs/a/final.tmp", None, "/runs/a/final")
    status, err = _run(error, capsys)
    assert status == 2 and err.startswith("error: /runs/a/final.tmp -> /runs/a/final: Permission denied")


def test_a_real_corrupt_safetensors_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\xff" * 64)  # a header length of 2**64-1 bytes: "header too large"

    def main(argv: list[str]) -> int:
        load_file(bad)
        return 0

    status = run_entry_point(main, [])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("error: a safetensors weights file is corrupt or truncated (")
    status = run_entry_point(main, ["--debug"])
    err = capsys.readouterr().err
    assert status == 2 and "SafetensorError" in err and "Traceback (most recent call last)" in err


def test_json_read_through_the_helper_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "ds_config.json"
    path.write_text('{\n  "train_batch_size": 8,\n}\n')
    with pytest.raises(ValueError, match=rf"^--deepspeed_config={path}:3: not valid JSON \("):
        read_json_file(path, "--deepspeed_config")

    status = run_entry_point(lambda argv: read_json_file(path), [])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(f"error: {path}:3: not valid JSON") and len(err.splitlines()) == 1
    assert read_json_file(_write(tmp_path / "ok.json", {"a": 1})) == {"a": 1}


def _write(path, value):
    path.write_text(json.dumps(value))
    return path


def test_a_bare_json_error_is_still_one_line(capsys):
    try:
        json.loads("{")
    except json.JSONDecodeError as error:
        status, err = _run(error, capsys)
    assert status == 2 and err.startswith("error: not valid JSON (") and "Traceback" not in err
    assert describe_error(json.JSONDecodeError("Expecting value", "x", 0)).startswith("not valid JSON")


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    status, err = _run(KeyboardInterrupt(), capsys)
    assert (status, err) == (EXIT_INTERRUPTED, "interrupted\n")
    status, err = _run(Interrupted("kept 3 shards in out.encoding; rerun with --resumable"), capsys)
    assert (status, err) == (130, "interrupted: kept 3 shards in out.encoding; rerun with --resumable\n")
    status, err = _run(KeyboardInterrupt(), capsys, ["--debug"])
    assert status == 130 and "Traceback (most recent call last)" in err and err.endswith("interrupted\n")


def test_on_interrupt_attaches_the_message_at_the_moment_of_the_interrupt(capsys):
    kept = []

    def main(argv: list[str]) -> int:
        with on_interrupt(lambda: f"kept {len(kept)} shards"):
            kept.extend([1, 2])
            raise KeyboardInterrupt
        return 0

    assert run_entry_point(main, []) == 130
    assert capsys.readouterr().err == "interrupted: kept 2 shards\n"


def test_the_innermost_message_wins():
    with pytest.raises(Interrupted, match=r"^inner$"), on_interrupt("outer"), on_interrupt("inner"):
        raise KeyboardInterrupt
    with pytest.raises(ValueError, match=r"^x$"), on_interrupt("outer"):  # other exceptions pass untouched
        raise ValueError("x")


needs_dev_full = pytest.mark.skipif(
    not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)),
    reason="needs the /dev/full device (Linux), whose every write fails with ENOSPC",
)


@needs_dev_full
def test_a_write_on_a_full_disk_names_the_file_given_by_names_path(capsys):
    def main(argv: list[str]) -> int:
        with names_path("/runs/a/metrics.json"), open("/dev/full", "w") as handle:
            handle.write("x" * 100_000)  # the error comes from write/close: OSError without a file name
        return 0

    status = run_entry_point(main, [])
    assert (status, capsys.readouterr().err) == (
        2,
        "error: /runs/a/metrics.json: no space left on device: free space or write to another disk, then rerun\n",
    )
    with pytest.raises(OSError) as caught, names_path("/elsewhere"):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/kept")
    assert caught.value.filename == "/kept"  # a name already there is kept


@needs_dev_full
def test_eval_beir_output_on_a_full_disk_names_the_output(tiny_model_dir, beir_dir, capsys):
    argv = ["eval", "beir", "--model", str(tiny_model_dir), "--data", str(beir_dir), "--output", "/dev/full"]
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert (
        err == "error: /dev/full: no space left on device: free space or write to another disk, then rerun\n"
    )


def test_a_safetensors_io_error_is_described_as_one(tmp_path, capsys):
    target = tmp_path / "missing" / "shard.safetensors"

    def main(argv: list[str]) -> int:
        save_file({"a": torch.zeros(2)}, str(target))
        return 0

    assert run_entry_point(main, []) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: {tmp_path / 'missing'}/\S+: No such file or directory\n", err), err
