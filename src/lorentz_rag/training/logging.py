"""Training logs: ``metrics.jsonl`` always, a tqdm bar on a terminal, Weights & Biases when asked.

Only the main process (rank 0) writes. Each logged step is one JSON object per line in
``output_dir/metrics.jsonl`` (on resume, records after the checkpoint's step are dropped and the file continues from there).
wandb runs when ``train_args.wandb_project`` is set; without an API key (``WANDB_API_KEY`` or a netrc
entry) it runs offline, writing under ``output_dir/wandb`` for a later ``wandb sync``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lorentz_rag.atomic_files import write_text

__all__ = ["MetricsLogger", "read_metrics"]


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(encoding="utf-8")
    except OSError:
        return False


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than invalid
    return value


class MetricsLogger:
    """Writes step metrics to ``metrics.jsonl``, a progress bar and (optionally) wandb.

    ``total_steps``: the optimizer-step budget (for the bar); ``start_step``: where a resumed run begins.
    On ranks other than 0 (``enabled=False``) every method does nothing.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        wandb_project: str | None = None,
        wandb_run_name: str | None = None,
        config: dict[str, Any] | None = None,
        progress_bar: bool | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._bar = None
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._drop_records_after(start_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if progress_bar is None:
            progress_bar = sys.stderr.isatty()
        if progress_bar:
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        if wandb_project:
            import wandb

            mode = os.environ.get("WANDB_MODE") or ("online" if _has_wandb_key() else "offline")
            self._wandb = wandb.init(  # writes output_dir/wandb/
                project=wandb_project,
                name=wandb_run_name,
                config=config,
                dir=str(output_dir),
                mode=mode,
                resume="allow",
            )

    def _drop_records_after(self, step: int) -> None:
        # A resumed run repeats the steps after its checkpoint; keep one record per step.
        with open(self.path, encoding="utf-8") as handle:
            kept = [line for line in handle if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text(self.path, "".join(kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` (floats, ints, strings) at optimizer step ``step``."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _json_value(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._bar is not None:
            shown = {
                k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "lr", "curvature", "tokens_per_s")
            }
            self._bar.set_postfix(shown, refresh=False)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def advance(self, steps: int = 1) -> None:
        """Move the progress bar (every optimizer step, logged or not)."""
        if self.enabled and self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(output_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``output_dir/metrics.jsonl``, in order."""
    path = Path(output_dir) / "metrics.jsonl"
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
