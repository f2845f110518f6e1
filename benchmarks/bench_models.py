"""Side-by-side speed and size of the embedding models.

1. HyTE-FH vs its Euclidean twin (transformers' ModernBertModel) at the same sizes: forward+backward time
   of the embedding model (trunk + pooling, loss = sum of the pooled output) on CPU; target ratio <= 1.5.
2. HyTE-H on the packaged all-MiniLM-L6-v2 (no extra blocks) vs sentence-transformers encoding the same
   model: encode throughput on real sentences (the FAQ dev corpus); target >= 0.9x.
3. Parameter counts at the paper's size (HyTE-FH 12 x 768, the ModernBERT twin at the same sizes, and
   ModernBERT-base itself), built on the meta device.

A and B repetitions are interleaved and medians reported, because the CPUs are shared. Results go to
benchmarks/results/models.json and models.md. Run:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/bench_models.py [--threads 2] [--reps 7]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

import lorentz_rag
from lorentz_rag.models import build_model, packaged_minilm_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _interleaved(fns: dict[str, Any], reps: int, warmup: int) -> dict[str, list[float]]:
    """Run each callable ``warmup`` times, then ``reps`` rounds of all of them in turn; seconds per call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_twins(sizes: dict[str, int], seq_len: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """HyTE-FH (OEM pooling) and its Euclidean twin (ModernBertModel, mean pooling) at the same ``sizes``
    (model_args size keys), in train mode; the packaged MiniLM gives the tokenizer (30,522 tokens)."""
    common = {"model_name": str(packaged_minilm_path()), "max_seq_length": seq_len, **sizes}
    torch.manual_seed(0)
    hyte = build_model({"model_type": "hyte_fh", "pooling": "outward_einstein_midpoint", **common}).train()
    twin = build_model(
        {"model_type": "euclidean", "euclidean_base": "modernbert", "pooling": "mean", **common}
    ).train()
    return hyte, twin


def bench_twins(args: argparse.Namespace) -> dict[str, Any]:
    sizes = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}
    hyte, twin = build_twins(sizes, args.seq_len)
    vocab = hyte.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (args.batch, args.seq_len), generator=g)
    mask = torch.ones_like(ids)

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            model(ids, mask).sum().backward()

        return run

    fns = {"hyte_fh": step(hyte), "euclidean": step(twin)}
    compile_s = None
    if getattr(
        args, "compile", False
    ):  # the same weights with compile=True (torch.compile), timed beside the eager one
        compiled = copy.deepcopy(hyte)
        compiled.model.compile_switch.enabled = True
        fns["hyte_fh_compiled"] = step(compiled)
        t0 = time.perf_counter()
        fns["hyte_fh_compiled"]()  # compiles
        compile_s = time.perf_counter() - t0
        if compiled.model.compile_switch.failure:
            raise RuntimeError(f"compilation failed: {compiled.model.compile_switch.failure}")
    times = _interleaved(fns, args.reps, args.warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "sizes": {**sizes, "intermediate_size": hyte.config.intermediate_size, "vocab_size": vocab},
        "batch": args.batch,
        "seq_len": args.seq_len,
        "median_s": med,
        "all_s": times,
        "ratio_hyte_fh_over_euclidean": med["hyte_fh"] / med["euclidean"],
        **(
            {
                "ratio_hyte_fh_compiled_over_euclidean": med["hyte_fh_compiled"] / med["euclidean"],
                "compile_s": compile_s,
            }
            if compile_s is not None
            else {}
        ),
        "params": {"hyte_fh": _params(hyte), "euclidean": _params(twin)},
    }
    if args.profile:
        result["profile_hyte_fh"] = _profile(step(hyte))
    return result


def _profile(fn) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)


def _faq_texts(n: int) -> list[str]:
    texts = []
    with open(ROOT / "data" / "eval" / "faq-dev" / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
    with open(ROOT / "data" / "eval" / "faq-dev" / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
    return texts[:n]


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_hyte_h_encode(args: argparse.Namespace, device: str = "cpu") -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    path = str(packaged_minilm_path())
    st = SentenceTransformer(path, device=device)
    torch.manual_seed(0)
    hyte_h = build_model(
        {
            "model_type": "hyte_h",
            "model_name": path,
            "max_seq_length": st.max_seq_length,
            "query_prefix": "",
            "document_prefix": "",
        }
    ).eval()
    hyte_h.to(device)
    texts = _faq_texts(args.encode_texts)

    def ours():
        hyte_h.encode(texts, prompt_type="document", batch_size=args.encode_batch)
        _sync(device)

    def theirs():
        st.encode(texts, batch_size=args.encode_batch, convert_to_tensor=True)
        _sync(device)

    times = _interleaved({"hyte_h": ours, "sentence_transformers": theirs}, args.encode_reps, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: len(texts) / v for k, v in med.items()}
    return {
        "texts": len(texts),
        "batch_size": args.encode_batch,
        "max_seq_length": st.max_seq_length,
        "median_s": med,
        "all_s": times,
        "texts_per_s": tps,
        "throughput_ratio_hyte_h_over_st": tps["hyte_h"] / tps["sentence_transformers"],
    }


def paper_size_params() -> dict[str, int]:
    from transformers import ModernBertConfig, ModernBertModel

    from lorentz_rag.models.hyte_fh import HyteFHConfig, HyteFHTrunk

    with torch.device("meta"):
        hyte = HyteFHTrunk(HyteFHConfig())  # the paper's 12 x 768, ModernBERT-base vocabulary
        c = HyteFHConfig()
        twin_cfg = ModernBertConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            intermediate_size=c.intermediate_size,
            layer_types=["full_attention"] * c.num_hidden_layers,
        )
        twin = ModernBertModel(twin_cfg)
        base = ModernBertModel(ModernBertConfig())  # ModernBERT-base: 22 layers
    return {
        "hyte_fh_12x768": _params(hyte),
        "euclidean_twin_12x768": _params(twin),
        "modernbert_base_22x768": _params(base),
    }


def _loads(values) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


def write_markdown(result: dict[str, Any], path: Path) -> None:
    tw, enc, pp = result["twins"], result["hyte_h_encode"], result["paper_size_params"]
    s = tw["sizes"]
    lines = [
        "# Model benchmarks (CPU)",
        "",
        f"Command: `{result['command']}`  ",
        f"torch {result['torch']}, {result['threads']} threads, {result['machine']}; "
        f"medians of {result['reps']} interleaved repetitions (shared CPUs: expect noise)."
        + (f"  \n{result['note']}" if result.get("note") else "")
        + (
            f"  \nload average (1/5/15 min) at the start {_loads(result['loadavg_start'])}, at the end "
            f"{_loads(result['loadavg_end'])}"
            if "loadavg_start" in result
            else ""
        ),
        "",
        f"## HyTE-FH vs its Euclidean twin ({s['num_hidden_layers']} x {s['hidden_size']}, "
        f"{s['num_attention_heads']} heads, batch {tw['batch']}, seq {tw['seq_len']}), forward + backward",
        "",
        "| model | median s/step | parameters |",
        "|---|---|---|",
        f"| HyTE-FH (OEM pooling) | {tw['median_s']['hyte_fh']:.3f} | {tw['params']['hyte_fh']:,} |",
        f"| Euclidean twin (ModernBertModel, mean) | {tw['median_s']['euclidean']:.3f} | {tw['params']['euclidean']:,} |",
        *(
            [
                f"| HyTE-FH, compile=True (torch.compile; compiling took {tw['compile_s']:.0f} s) | "
                f"{tw['median_s']['hyte_fh_compiled']:.3f} | {tw['params']['hyte_fh']:,} |"
            ]
            if "hyte_fh_compiled" in tw["median_s"]
            else []
        ),
        "",
        f"Time ratio HyTE-FH / twin: **{tw['ratio_hyte_fh_over_euclidean']:.2f}** (target <= 1.15)"
        + (
            f"; compiled HyTE-FH / twin: **{tw['ratio_hyte_fh_compiled_over_euclidean']:.2f}**."
            if "ratio_hyte_fh_compiled_over_euclidean" in tw
            else "."
        ),
        "",
        f"## HyTE-H encode throughput (all-MiniLM-L6-v2 base, no blocks; {enc['texts']} FAQ texts, "
        f"batch {enc['batch_size']}, max {enc['max_seq_length']} tokens)"
        + (" - from the previous run (this one used --skip-encode)" if enc.get("from_previous_run") else ""),
        "",
        "| encoder | texts/s |",
        "|---|---|",
        f"| HyTE-H `encode` | {enc['texts_per_s']['hyte_h']:.1f} |",
        f"| sentence-transformers `encode` (same model) | {enc['texts_per_s']['sentence_transformers']:.1f} |",
        "",
        f"Throughput ratio HyTE-H / sentence-transformers: **{enc['throughput_ratio_hyte_h_over_st']:.2f}** "
        "(target >= 0.9).",
        "",
        "## Parameter counts at the paper's size (meta device)",
        "",
        "| model | parameters |",
        "|---|---|",
        *(f"| {k} | {v:,} |" for k, v in pp.items()),
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--encode-texts", type=int, default=256)
    parser.add_argument("--encode-batch", type=int, default=32)
    parser.add_argument("--encode-reps", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler table for HyTE-FH")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time HyTE-FH with compile=True (same weights, interleaved)",
    )
    parser.add_argument("--skip-encode", action="store_true", help="skip the HyTE-H encode comparison")
    parser.add_argument("--note", default="", help="a line added under the command in models.md")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    result: dict[str, Any] = {
        "command": "python benchmarks/bench_models.py "
        + " ".join(
            f"--{k.replace('_', '-')}={v}"
            for k, v in vars(args).items()
            if k not in ("out", "profile", "compile", "skip_encode", "note")
        )
        + "".join(
            f" --{k.replace('_', '-')}" for k in ("profile", "compile", "skip_encode") if getattr(args, k)
        ),
        "lorentz_rag": lorentz_rag.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()}".strip(),
        "reps": args.reps,
        "note": args.note,
        "loadavg_start": os.getloadavg(),  # (1, 5, 15 min) on a shared machine: how quiet the run was
    }
    result["paper_size_params"] = paper_size_params()
    print("paper-size parameters:", result["paper_size_params"], flush=True)
    result["twins"] = bench_twins(args)
    print(
        "twins:",
        {k: result["twins"][k] for k in ("median_s", "ratio_hyte_fh_over_euclidean", "params")},
        flush=True,
    )
    if args.profile:
        print(result["twins"]["profile_hyte_fh"])
    if args.skip_encode:  # keep the previous run's encode section (marked as such)
        previous = json.loads((args.out / "models.json").read_text())["hyte_h_encode"]
        result["hyte_h_encode"] = {**previous, "from_previous_run": True}
    else:
        result["hyte_h_encode"] = bench_hyte_h_encode(args)
    enc = result["hyte_h_encode"]
    print(
        "hyte_h encode:",
        enc["texts_per_s"],
        "ratio",
        round(enc["throughput_ratio_hyte_h_over_st"], 3),
        flush=True,
    )

    result["loadavg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "models.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "models.md")
    print(f"wrote {args.out / 'models.json'} and models.md")


if __name__ == "__main__":
    main()
