"""Training configuration: YAML + dotted overrides, errors that name the key and its source, .env, configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from lorentz_rag.training.config import (
    ConfigError,
    TrainArgs,
    TrainConfig,
    load_config,
    parse_command_line,
    write_config,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "train").glob("*.yaml"))

BASE_YAML = """\
train_args:
  task: contrastive
  dtype: fp32
  learning_rate: 1.0e-3
  max_steps: 10
  batch_size: 4
model_args:
  model_type: hyte_fh
  hidden_size: 32
data_args:
  data_path: rows.jsonl
"""


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_and_dotted_overrides_in_both_forms(tmp_path):
    path = write(tmp_path, BASE_YAML)
    parsed = parse_command_line(
        [
            f"--config={path}",
            "--train_args.dtype=bf16",
            "--model_args.trainable_curvature=False",
            "--train_args.learning_rate",
            "2e-4",
            "--data_args.data_path=/data/mds",
            "--deepspeed_config=configs/deepspeed/ds_config.json",
            "--local_rank=3",
        ],
        dotenv_dir=None,
    )
    cfg = parsed.config
    assert cfg.train_args.dtype == "bf16"
    assert cfg.model_args.trainable_curvature is False
    assert cfg.train_args.learning_rate == pytest.approx(2e-4)
    assert cfg.train_args.batch_size == 4  # from the YAML
    assert cfg.model_args.hidden_size == 32
    assert cfg.data_args.data_path == "/data/mds"
    assert parsed.deepspeed_config == "configs/deepspeed/ds_config.json"
    assert parsed.local_rank == 3
    # Defaults that depend on the model: hyperbolic -> geodesic, and the saved similarity follows it.
    assert cfg.train_args.distance == "geodesic"
    assert cfg.model_args.similarity == "geodesic"


def test_distance_override_sets_the_saved_similarity(tmp_path):
    cfg = load_config(write(tmp_path, BASE_YAML), ["train_args.distance=lorentz_inner"], dotenv_dir=None)
    assert cfg.model_args.similarity == "lorentz_inner"


def test_unknown_yaml_key_names_file_line_and_closest_key(tmp_path):
    text = BASE_YAML.replace("  batch_size: 4\n", "  batch_sise: 4\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, dotenv_dir=None)
    message = str(info.value)
    line = text.splitlines().index("  batch_sise: 4") + 1
    assert "train_args.batch_sise" in message
    assert f"{path}:{line}" in message
    assert "did you mean 'train_args.batch_size'" in message


def test_unknown_model_args_key_in_yaml(tmp_path):
    path = write(tmp_path, BASE_YAML.replace("  hidden_size: 32", "  hiden_size: 32"))
    with pytest.raises(
        ConfigError, match=r"model_args.hiden_size.*run.yaml:9.*did you mean 'model_args.hidden_size'"
    ):
        load_config(path, dotenv_dir=None)


def test_unknown_keys_of_every_section_are_reported_together_with_their_sources(tmp_path):
    text = BASE_YAML.replace("  batch_size: 4\n", "  batch_sise: 4\n").replace(
        "  hidden_size: 32", "  hiden_size: 32"
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["data_args.max_row=3"], dotenv_dir=None)
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid training configuration:"
    assert sorted(line.split("'")[1] for line in lines[1:]) == [
        "data_args.max_row",
        "model_args.hiden_size",
        "train_args.batch_sise",
    ]
    assert "(command line: --data_args.max_row); did you mean 'data_args.max_rows'?" in str(info.value)


def test_sections_built_in_code_refuse_unknown_keys_too():
    with pytest.raises(
        ValidationError, match=r"unknown train_args key 'batch_sise'; did you mean 'batch_size'\?"
    ):
        TrainArgs(batch_sise=4, max_steps=1)
    with pytest.raises(ValidationError, match=r"unknown training configuration key 'trian_args'"):
        TrainConfig.model_validate({"trian_args": {}})


def test_unknown_command_line_key_and_section(tmp_path):
    path = write(tmp_path, BASE_YAML)
    with pytest.raises(
        ConfigError,
        match=r"'train_args.learning_rat' \(command line.*did you mean 'train_args.learning_rate'",
    ):
        parse_command_line([f"--config={path}", "--train_args.learning_rat=1"], dotenv_dir=None)
    with pytest.raises(
        ConfigError, match=r"unknown section 'trian_args' \(command line.*did you mean 'train_args'"
    ):
        parse_command_line([f"--config={path}", "--trian_args.seed=1"], dotenv_dir=None)


def test_bad_enum_value_names_key_value_and_source(tmp_path):
    path = write(tmp_path, BASE_YAML)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train_args.dtype=bf17"], dotenv_dir=None)
    message = str(info.value)
    assert "'bf17'" in message and "train_args.dtype" in message and "command line" in message
    assert "bf16" in message  # the valid choices are listed
    text = BASE_YAML.replace("schedule_type", "x").replace(
        "  max_steps: 10\n", "  max_steps: 10\n  schedule_type: cosin\n"
    )
    with pytest.raises(ConfigError, match=r"'cosin' for 'train_args.schedule_type' \(.*run.yaml:6\)"):
        load_config(write(tmp_path, text), dotenv_dir=None)


def test_cosine_distance_is_for_the_euclidean_twin_only(tmp_path):
    path = write(tmp_path, BASE_YAML)
    with pytest.raises(ConfigError, match="cosine is for the Euclidean twin"):
        load_config(path, ["train_args.distance=cosine"], dotenv_dir=None)
    with pytest.raises(ConfigError, match="needs a hyperbolic model"):
        load_config(
            path, ["model_args.model_type=euclidean", "train_args.distance=geodesic"], dotenv_dir=None
        )
    cfg = load_config(path, ["model_args.model_type=euclidean"], dotenv_dir=None)
    assert cfg.train_args.distance == "cosine"


def test_steps_or_epochs_required(tmp_path):
    path = write(tmp_path, BASE_YAML.replace("  max_steps: 10\n", ""))
    with pytest.raises(ConfigError, match=r"num_epochs or train_args\.max_steps"):
        load_config(path, dotenv_dir=None)


def test_dotenv_is_read_without_overriding_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("OUTPUT_DIR", raising=False)
    monkeypatch.delenv("MDS_PRETRAIN_DATA_PATH", raising=False)
    monkeypatch.setenv("HF_TOKEN", "from-environment")
    (tmp_path / ".env").write_text(
        "OUTPUT_DIR=/tmp/from-dotenv\nMDS_PRETRAIN_DATA_PATH=/mds/pretrain\nHF_TOKEN=from-dotenv\n",
        encoding="utf-8",
    )
    text = BASE_YAML.replace("data_path: rows.jsonl", "data_path: ${MDS_PRETRAIN_DATA_PATH}")
    text = text.replace("  batch_size: 4\n", "  batch_size: 4\n  output_dir: ${OUTPUT_DIR}/run1\n")
    path = write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    try:
        cfg = load_config(path)  # reads ./.env
        assert cfg.data_args.data_path == "/mds/pretrain"
        assert cfg.train_args.output_dir == "/tmp/from-dotenv/run1"
        assert os.environ["HF_TOKEN"] == "from-environment"  # existing variables win
    finally:
        for key in ("OUTPUT_DIR", "MDS_PRETRAIN_DATA_PATH"):
            os.environ.pop(key, None)


def test_unset_variable_is_an_error_naming_it_and_the_line(tmp_path, monkeypatch):
    monkeypatch.delenv("LORENTZ_RAG_SURELY_UNSET", raising=False)
    path = write(tmp_path, BASE_YAML.replace("rows.jsonl", "${LORENTZ_RAG_SURELY_UNSET}"))
    with pytest.raises(ConfigError, match=r"run.yaml:11.*\$\{LORENTZ_RAG_SURELY_UNSET\} is not set"):
        load_config(path, dotenv_dir=None)


def test_an_unset_variable_does_not_matter_when_the_key_is_overridden(tmp_path, monkeypatch):
    monkeypatch.delenv("LORENTZ_RAG_SURELY_UNSET", raising=False)
    path = write(tmp_path, BASE_YAML.replace("rows.jsonl", "${LORENTZ_RAG_SURELY_UNSET}"))
    cfg = load_config(path, ["data_args.data_path=/given/on/the/command/line"], dotenv_dir=None)
    assert cfg.data_args.data_path == "/given/on/the/command/line"


def test_written_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, BASE_YAML), ["train_args.seed=7"], dotenv_dir=None)
    write_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml", dotenv_dir=None)
    assert again == cfg
    assert isinstance(again, TrainConfig)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path, monkeypatch):
    monkeypatch.setenv("MDS_PRETRAIN_DATA_PATH", "/mds")
    cfg = load_config(path, dotenv_dir=None)
    assert cfg.train_args.max_steps or cfg.train_args.num_epochs
    if (
        cfg.train_args.task == "contrastive"
        and cfg.model_args.model_type != "hyte_h"
        and "tiny" not in path.name
    ):
        assert cfg.model_args.init_from, "stage-2 configs start from an MLM output"


def test_shipped_config_set_is_complete():
    names = {p.name for p in CONFIGS}
    assert {
        "albert_mlm_modernbert.yaml",
        "contrastive_pretrain_albert.yaml",
        "contrastive_pretrain_hybrid.yaml",
        "contrastive_finetune.yaml",
        "euclidean_mlm.yaml",
        "euclidean_contrastive.yaml",
        "cpu_tiny_mlm.yaml",
        "cpu_tiny_contrastive.yaml",
    } <= names
