"""``model_args.compile: auto`` (the default): whether a training run compiles HyTE-FH, and why.

``true`` / ``false`` are obeyed as written. ``auto`` decides per run, and the run's log says what it decided
(``compile: auto -> on because ...``):

- CUDA: on from the first step (inductor's kernels and the GPU's launch overhead make compiling pay within a
  few steps there).
- CPU: off for the first :data:`MEASURED_STEPS` optimizer steps, which run eagerly and time the run's own
  step (the first has one-time costs: allocation, the optimizer's state; the slowest rank's time counts
  under DDP). Then compiling is turned on when the steps left repay it::

      steps_left x CPU_SAVING x eager_step_s  >  compile_s = CPU_COMPILE_S + CPU_COMPILE_S_PER_LAYER x layers

  (the trunk is one graph, its blocks unrolled, so compiling grows with the depth.)
- any other device, and models without a compiled path (HyTE-H, the Euclidean twins): off.

The constants, measured on the shared 2-core CPU (2026-12-06, load average 3-7; see
``benchmarks/results/compile_auto.md`` and ``benchmarks/bench_models.py --compile``):

- :data:`CPU_COMPILE_S` and :data:`CPU_COMPILE_S_PER_LAYER`: compiling HyTE-FH's trunk graph (forward
  and backward) with a cold inductor cache took 335 s at 4 x 256 under load 6-7 (the per-block graphs
  before: 80-170 s cold); a masked-LM run also compiles its head's kernels, and the first checkpoint's
  finite-output probe a forward-only graph. A warm cache (a second run on the same machine) compiles
  several times faster, so the rule is conservative there.
- :data:`CPU_SAVING` = 0.25: the share of an eager training step that compiling saves. Forward+backward
  of the model alone saves 22-37% (2 x 64 and 4 x 256 trunks, contrastive and masked-LM steps, interleaved
  medians); the optimizer step, data and tokenisation, which compiling does not touch, dilute it.

Compiled and eager steps agree to float32 rounding, so turning compilation on mid-run changes no result
beyond that; a failed compile falls back to eager with one warning (:mod:`lorentz_rag.nn._compile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lorentz_rag.training.distributed import gather_sizes

__all__ = [
    "CPU_COMPILE_S",
    "CPU_COMPILE_S_PER_LAYER",
    "CPU_SAVING",
    "MEASURED_STEPS",
    "AutoCompile",
    "Decision",
    "cpu_compile_s",
    "cpu_decision",
]

CPU_COMPILE_S = 60.0
CPU_COMPILE_S_PER_LAYER = 70.0
CPU_SAVING = 0.25
MEASURED_STEPS = 2


@dataclass(frozen=True)
class Decision:
    """``enabled``: compile from now on; ``reason``: the log line's explanation."""

    enabled: bool
    reason: str

    def log_line(self) -> str:
        return f"compile: auto -> {'on' if self.enabled else 'off'} because {self.reason}"


def cpu_compile_s(num_layers: int) -> float:
    """The estimated seconds to compile a HyTE-FH of ``num_layers`` blocks on the CPU (cold cache)."""
    return CPU_COMPILE_S + CPU_COMPILE_S_PER_LAYER * num_layers


def cpu_decision(steps_left: int, eager_step_s: float, compile_s: float) -> Decision:
    """The CPU rule (module docstring): compile iff ``steps_left x CPU_SAVING x eager_step_s > compile_s``."""
    saved = steps_left * CPU_SAVING * eager_step_s
    enabled = saved > compile_s
    reason = (
        f"{steps_left} steps left x {CPU_SAVING:.0%} saved of the measured eager step {eager_step_s:.3g} s = "
        f"{saved:.0f} s {'>' if enabled else '<='} {compile_s:.0f} s to compile on CPU"
    )
    return Decision(enabled, reason)


def compile_switch(model: Any) -> Any:
    """The model's :class:`~lorentz_rag.nn._compile.CompileSwitch` (HyTE-FH and its masked-LM model keep it
    on their trunk, ``.model``), or None for models without a compiled path."""
    return getattr(getattr(model, "model", None), "compile_switch", None)


class AutoCompile:
    """``compile: auto`` over one run: :meth:`start` before the first step, :meth:`after_step` after each.

    ``setting`` is ``model_args.compile``; anything but ``"auto"`` makes this object do nothing.
    ``log`` receives the decision's line (the trainer prints it on rank 0).
    """

    def __init__(self, model: Any, setting: Any, device: torch.device, total_steps: int, log) -> None:
        self.switch = compile_switch(model) if setting == "auto" else None
        config = getattr(getattr(model, "model", None), "config", None)
        self.num_layers = int(getattr(config, "num_hidden_layers", 12))
        self.device = torch.device(device)
        self.total_steps = total_steps
        self.log = log
        self.decision: Decision | None = None
        self._eager_steps = 0

    @property
    def pending(self) -> bool:
        return self.switch is not None and self.decision is None

    def start(self, step: int) -> None:
        """Decide at once where no measurement is needed (CUDA, other devices, a run too short to measure)."""
        if not self.pending:
            return
        if self.device.type == "cuda":
            self._decide(Decision(True, "the device is CUDA"))
        elif self.device.type != "cpu":
            self._decide(Decision(False, f"the device is {self.device.type} (auto compiles on CUDA and CPU)"))
        elif self.total_steps - step <= MEASURED_STEPS:
            self._decide(
                Decision(
                    False, f"only {self.total_steps - step} steps are left (too short to repay a compile)"
                )
            )

    def after_step(self, step: int, seconds: float) -> None:
        """After optimizer step ``step`` (1-based) that took ``seconds`` eagerly: decide after the measured one."""
        if not self.pending:
            return
        self._eager_steps += 1
        if self._eager_steps < MEASURED_STEPS:
            return
        slowest_us = max(gather_sizes(round(seconds * 1e6), self.device))  # every rank decides the same
        self._decide(cpu_decision(self.total_steps - step, slowest_us / 1e6, cpu_compile_s(self.num_layers)))

    def _decide(self, decision: Decision) -> None:
        self.decision = decision
        self.switch.enabled = decision.enabled
        self.log(decision.log_line())
