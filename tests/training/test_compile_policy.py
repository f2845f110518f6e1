"""``model_args.compile: auto`` (training/compile_policy.py): the CPU rule, the CUDA and short-run cases, true /
false left alone, the setting's values, a resume that changes it, and the decision's line in a run's log."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from pydantic import ValidationError

from lorentz_rag.data.bundled import mlm_text_path
from lorentz_rag.models.args import ModelArgs
from lorentz_rag.nn import _compile
from lorentz_rag.nn._compile import CompileSwitch
from lorentz_rag.training import compile_policy
from lorentz_rag.training.compile_policy import (
    CPU_COMPILE_S,
    CPU_COMPILE_S_PER_LAYER,
    CPU_SAVING,
    MEASURED_STEPS,
    AutoCompile,
    cpu_compile_s,
    cpu_decision,
)
from lorentz_rag.training.config import load_config
from lorentz_rag.training.resume import config_differences
from lorentz_rag.training.trainer import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


def test_cpu_rule_compiles_when_the_steps_left_repay_the_compile():
    step_s, compile_s = 0.5, 300.0
    break_even = compile_s / (CPU_SAVING * step_s)  # 2400 steps
    on = cpu_decision(int(break_even) + 1, step_s, compile_s)
    off = cpu_decision(int(break_even), step_s, compile_s)
    assert on.enabled and not off.enabled
    assert on.log_line().startswith("compile: auto -> on because 2401 steps left x 25% saved")
    assert "= 300 s > 300 s to compile on CPU" in on.log_line()
    assert off.log_line().startswith("compile: auto -> off because 2400 steps left")
    assert "<= 300 s" in off.log_line()
    assert not cpu_decision(10**6, 0.0, compile_s).enabled  # a free step saves nothing
    # Compiling grows with the depth (the trunk's blocks are unrolled into one graph).
    assert cpu_compile_s(4) == CPU_COMPILE_S + 4 * CPU_COMPILE_S_PER_LAYER < cpu_compile_s(12)


def _auto(setting, device="cpu", total_steps=10_000):
    trunk = SimpleNamespace(compile_switch=CompileSwitch(False), config=SimpleNamespace(num_hidden_layers=4))
    model = SimpleNamespace(model=trunk)
    lines: list[str] = []
    return AutoCompile(model, setting, torch.device(device), total_steps, lines.append), model, lines


def test_cpu_decides_after_the_measured_eager_steps():
    auto, model, lines = _auto("auto", total_steps=10_000)
    auto.start(0)
    assert auto.pending and not lines
    for step in range(1, MEASURED_STEPS):
        auto.after_step(step, 100.0)  # the first step's one-time costs do not count
        assert auto.pending and not model.model.compile_switch.enabled
    auto.after_step(MEASURED_STEPS, 0.5)
    assert not auto.pending and model.model.compile_switch.enabled
    assert lines == [cpu_decision(10_000 - MEASURED_STEPS, 0.5, cpu_compile_s(4)).log_line()]
    auto.after_step(MEASURED_STEPS + 1, 0.001)  # decided once
    assert len(lines) == 1 and model.model.compile_switch.enabled


def test_a_slow_short_cpu_run_stays_eager():
    auto, model, lines = _auto("auto", total_steps=100)
    auto.start(0)
    for step in range(1, MEASURED_STEPS + 1):
        auto.after_step(step, 1.0)  # 98 x 25% x 1 s = 24.5 s, far below the compile
    assert not model.model.compile_switch.enabled and lines[0].startswith("compile: auto -> off because 98 ")


def test_cuda_compiles_from_the_first_step_and_too_short_runs_do_not():
    auto, model, lines = _auto("auto", device="cuda")
    auto.start(0)
    assert model.model.compile_switch.enabled and lines == ["compile: auto -> on because the device is CUDA"]
    auto, model, lines = _auto("auto", total_steps=12)
    auto.start(10)  # a resumed run with 2 steps left
    assert not model.model.compile_switch.enabled
    assert lines == ["compile: auto -> off because only 2 steps are left (too short to repay a compile)"]
    auto, model, lines = _auto("auto", device="meta")
    auto.start(0)
    assert not model.model.compile_switch.enabled and "the device is meta" in lines[0]


@pytest.mark.parametrize("setting", [True, False])
def test_true_and_false_are_left_alone(setting):
    auto, model, lines = _auto(setting, device="cuda")
    model.model.compile_switch.enabled = setting  # as the factory built it
    auto.start(0)
    for step in range(1, 5):
        auto.after_step(step, 10.0)
    assert model.model.compile_switch.enabled is setting and not lines and not auto.pending


def test_models_without_a_compiled_path_are_left_alone():
    lines: list[str] = []
    auto = AutoCompile(SimpleNamespace(model=object()), "auto", torch.device("cuda"), 100, lines.append)
    auto.start(0)
    auto.after_step(2, 100.0)
    assert not lines and compile_policy.compile_switch(torch.nn.Linear(2, 2)) is None


def test_the_setting_accepts_auto_true_false_and_auto_is_the_default():
    assert ModelArgs().compile == "auto"
    assert ModelArgs(compile=True).compile is True and ModelArgs(compile=False).compile is False
    assert ModelArgs.model_validate({"compile": "true"}).compile is True  # a command-line override
    with pytest.raises(ValidationError, match="compile"):
        ModelArgs(compile="sometimes")


def test_a_resume_may_change_the_compile_setting(tmp_path):
    config = load_config(
        CONFIGS / "cpu_tiny_mlm.yaml",
        {"train_args.output_dir": str(tmp_path), "data_args.data_path": str(mlm_text_path())},
        dotenv_dir=None,
    )
    saved = config.model_dump(mode="json")
    saved["model_args"]["compile"] = True  # a checkpoint written with compile: true (or the old default)
    saved["model_args"]["pooling_p"] = 2.0
    differences = config_differences(yaml.safe_dump(saved), config)
    assert ("model_args", "compile") not in differences and ("model_args", "pooling_p") in differences


def _tiny_mlm(out: Path, steps: int):
    return load_config(
        CONFIGS / "cpu_tiny_mlm.yaml",
        {
            "train_args.output_dir": str(out),
            "data_args.data_path": str(mlm_text_path()),
            "model_args.hidden_size": 16,
            "model_args.num_hidden_layers": 1,
            "model_args.num_attention_heads": 2,
            "model_args.intermediate_size": 24,
            "model_args.max_seq_length": 16,
            "train_args.batch_size": 4,
            "train_args.max_steps": steps,
            "train_args.save_every": 1000,
            "data_args.max_rows": 32,
        },
        dotenv_dir=None,
    )


def test_a_cpu_run_logs_the_decision_and_turns_compilation_on(tmp_path, monkeypatch, capsys):
    assert _tiny_mlm(tmp_path / "a", 3).model_args.compile == "auto"  # the shipped config keeps the default
    train(_tiny_mlm(tmp_path / "a", 3))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("compile:")]
    assert len(lines) == 1 and lines[0].startswith("compile: auto -> off because 1 steps left x 25% saved")

    # With a free compile the rule turns it on after the measured steps; the trunk then runs through
    # torch.compile (replaced here by a recorder that returns the plain function: no compiling in a test).
    compiled: list[str] = []
    monkeypatch.setattr(compile_policy, "CPU_COMPILE_S", -1e6)
    monkeypatch.setattr(_compile.torch, "compile", lambda fn, **kw: compiled.append(fn.__name__) or fn)
    train(_tiny_mlm(tmp_path / "b", MEASURED_STEPS + 2))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("compile:")]
    assert len(lines) == 1 and lines[0].startswith("compile: auto -> on because 2 steps left")
    assert "_trunk_graph" in compiled
