"""MDS: `lorentz-rag data to-mds` writes validated rows, open_dataset reads them back (mosaicml-streaming)."""

from __future__ import annotations

import json
import re
import sys

import pytest

from lorentz_rag.cli import main
from lorentz_rag.data.bundled import DataFormatError
from lorentz_rag.data.readers import detect_format, open_dataset


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PAIRS = [{"query": f"q{i}", "document": f"d{i} ünïcode", "negatives": [f"n{i}"] * (i % 3)} for i in range(23)]


def test_to_mds_round_trip_contrastive(streaming, tmp_path, capsys):
    src = _write(tmp_path / "pairs.jsonl", PAIRS)
    assert main(["data", "to-mds", "--input", str(src), "--out", str(tmp_path / "mds")]) == 0
    assert "wrote 23 contrastive rows" in capsys.readouterr().out
    assert detect_format(tmp_path / "mds") == "mds"
    ds = open_dataset(tmp_path / "mds", "contrastive", rank=0, world_size=1, mds_options={"batch_size": 4})
    assert len(ds) == 23
    assert [ds[i] for i in range(23)] == PAIRS
    assert list(ds) == PAIRS  # unshuffled iteration keeps the source order


def test_to_mds_round_trip_mlm_with_skipped_rows(streaming, tmp_path, capsys):
    src = _write(tmp_path / "text.jsonl", [{"text": "alpha"}, {"text": ""}, {"text": "beta"}])
    # The command line reports it as one error line, exit status 2 (lorentz_rag.errors).
    assert main(["data", "to-mds", "--input", str(src), "--out", str(tmp_path / "a"), "--kind", "mlm"]) == 2
    assert re.search(r"^error: .*text.jsonl:2: column 'text' \(text\) is empty", capsys.readouterr().err)
    out = tmp_path / "b"
    assert (
        main(["data", "to-mds", "--input", str(src), "--out", str(out), "--kind", "mlm", "--skip-malformed"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 2 mlm rows" in printed and "1 malformed rows skipped" in printed
    ds = open_dataset(out, "mlm", rank=0, world_size=1, mds_options={"batch_size": 1})
    assert list(ds) == [{"text": "alpha"}, {"text": "beta"}]
    assert (
        main(["data", "to-mds", "--input", str(src), "--out", str(out), "--kind", "mlm", "--skip-malformed"])
        == 2
    )
    assert "not empty" in capsys.readouterr().err


def test_open_mds_checks_rank_and_batch_size(streaming, tmp_path):
    src = _write(tmp_path / "pairs.jsonl", PAIRS[:4])
    main(["data", "to-mds", "--input", str(src), "--out", str(tmp_path / "mds")])
    with pytest.raises(ValueError, match="RANK=0/WORLD_SIZE=1"):
        open_dataset(tmp_path / "mds", "contrastive", rank=1, world_size=2, mds_options={"batch_size": 2})
    with pytest.raises(ValueError, match="needs batch_size"):
        open_dataset(tmp_path / "mds", "contrastive", rank=0, world_size=1)
    # Reading MDS rows as the other kind fails on the first sample, naming it.
    mlm = open_dataset(tmp_path / "mds", "mlm", rank=0, world_size=1, mds_options={"batch_size": 2})
    with pytest.raises(DataFormatError, match=r"mds sample 0: missing column 'text'"):
        mlm[0]


def test_write_mds_removes_a_partly_written_folder(streaming, tmp_path):
    from lorentz_rag.data.mds import write_mds

    with pytest.raises(DataFormatError, match="row 1: missing column 'text'"):
        write_mds([{"text": "a"}, {"body": "b"}], tmp_path / "out", "mlm")
    assert not (tmp_path / "out").exists()


def test_missing_streaming_names_the_mds_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "streaming", None)  # makes `import streaming` raise ImportError
    from lorentz_rag.data.mds import write_mds

    with pytest.raises(ImportError, match=r"pip install 'lorentz-rag\[mds\]'"):
        write_mds([{"text": "a"}], tmp_path / "out", "mlm")
