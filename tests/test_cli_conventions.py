"""Command-line conventions: --help without torch, both spellings of every long option."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lorentz_rag import cli

HELP_COMMANDS = [
    [],
    ["info"],
    ["train"],
    ["data", "to-mds"],
    ["eval"],
    ["eval", "beir"],
    ["eval", "mteb"],
    ["eval", "hierarchy"],
    ["eval", "rag"],
    ["index", "build"],
    ["search"],
    ["quickstart"],
]

_PROBE = """
import sys
from lorentz_rag.cli import main
for argv in {commands!r}:
    try:
        main([*argv, "--help"])
    except SystemExit as stop:
        assert stop.code in (0, None), (argv, stop.code)
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers", "mteb") if m in sys.modules)
print("HEAVY:", heavy)
"""


def test_help_does_not_import_torch():
    # A fresh interpreter: this test process has torch imported already.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(commands=HELP_COMMANDS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "HEAVY: []" in out, out[-2000:]
    assert "--top-k TOP_K, --top_k TOP_K" in out  # eval beir's help lists both spellings


def test_train_help_lists_every_config_key_with_type_default_and_description(capsys):
    from lorentz_rag.training.config import TrainConfig

    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--config=any.yaml", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    described = 0
    for name, section_field in TrainConfig.model_fields.items():
        for key, field in section_field.annotation.model_fields.items():
            assert f"\n  {name}.{key} (" in out, f"{name}.{key} missing from train --help"
            if field.description:
                assert " ".join(field.description.split()) in flat, f"{name}.{key}'s description missing"
                described += 1
    assert described >= 40
    # Types and defaults, including for fields without a description.
    assert "\n  train_args.learning_rate (float, default 0.0005)\n" in out
    assert "\n  train_args.distance (geodesic|lorentz_inner|cosine|euclidean|null, default None)\n" in out
    assert "\n  data_args.data_path (str|list[str], required)\n" in out
    assert "model_args.model_type (hyte_fh|hyte_h|euclidean, default 'hyte_fh')\n      hyte_fh (fully" in out


@pytest.mark.parametrize("spelling", ["-", "_"])
def test_long_options_accept_both_spellings(spelling):
    parser = cli.build_parser()

    def flag(name):
        return "--" + name.replace("-", spelling)

    beir = parser.parse_args(
        ["eval", "beir", "--model", "m", "--data", "d", flag("top-k"), "7", flag("batch-size"), "3"]
    )
    assert (beir.top_k, beir.batch_size) == (7, 3)
    mteb = parser.parse_args(
        ["eval", "mteb", "--model", "m", flag("output-dir"), "o", flag("batch-size"), "5"]
    )
    assert (mteb.output_dir, mteb.batch_size) == ("o", 5)
    search = parser.parse_args(
        ["search", "--index", "i", flag("top-k"), "4", flag("allow-model-mismatch"), "q"]
    )
    assert (search.k, search.allow_model_mismatch, search.queries) == (4, True, ["q"])
    build = parser.parse_args(
        [
            "index",
            "build",
            "--model",
            "m",
            "--corpus",
            "c",
            "--out",
            "o",
            flag("hnsw-m"),
            "8",
            flag("ef-search"),
            "9",
        ]
    )
    assert (build.hnsw_m, build.ef_search) == (8, 9)
    data = parser.parse_args(["data", "to-mds", "--input", "i", "--out", "o", flag("skip-malformed")])
    assert data.skip_malformed


def test_train_overrides_are_passed_through_untouched():
    args = cli.build_parser().parse_args(["train", "--config=x.yaml", "--train_args.max_steps=3"])
    assert args.train_argv == ["--config=x.yaml", "--train_args.max_steps=3"]
