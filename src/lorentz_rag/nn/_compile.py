"""Optional ``torch.compile`` of the Lorentz layers' elementwise chains; never required.

A HyTE-FH block is a few matrix products surrounded by chains of small elementwise operations (lifts,
norms, rotary, the Lorentz residual's projection, the attention midpoint); the MLR head's ``asinh`` runs
over ``[N, V]``. Eager PyTorch runs each operation as its own pass over memory; inductor fuses each chain
into one kernel, forward and backward. :class:`MaybeCompiled` wraps such a function: when its
:class:`CompileSwitch` is on it runs the compiled function, and if compiling (or running the compiled code)
raises, it warns once, turns the switch off and runs the plain function from then on, so a missing
compiler or an unsupported platform costs a warning, never a failed run. The backward graph is compiled
with the forward (``force_non_lazy_backward_lowering``) so that its failures are caught here too.

Shapes: the batch and sequence dimensions (``dynamic_dims``) are marked dynamic, so variable batch and
sequence lengths reuse one compiled graph; widths stay static. (A dimension of size 1 is specialised by
dynamo: a batch of one compiles a second graph.)

``fullgraph=True`` (HyTE-FH's trunk) makes a graph break a compile failure, so the function is one graph
or runs eagerly, never silently in pieces.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["CompileSwitch", "MaybeCompiled"]


class CompileSwitch:
    """Whether a model's compiled paths run: shared by all of the model's :class:`MaybeCompiled` functions,
    so that one failure turns every one of them off with one warning."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = bool(enabled)
        self.failure: str | None = None  # the error that turned compilation off, if one did

    def fail(self, err: BaseException) -> None:
        self.failure = f"{type(err).__name__}: {err}"
        if self.enabled:
            warnings.warn(
                f"torch.compile failed ({self.failure.splitlines()[0][:300]}); running HyTE-FH eagerly "
                "(same results, slower). Set model_args.compile=false to skip compiling.",
                RuntimeWarning,
                stacklevel=3,
            )
        self.enabled = False

    def __repr__(self) -> str:
        return f"CompileSwitch(enabled={self.enabled}, failure={self.failure!r})"


class MaybeCompiled:
    """``fn``, compiled with inductor while ``switch.enabled`` (see the module docstring).

    ``dynamic_dims`` maps a positional argument index to the dimensions of that tensor marked dynamic (an
    argument that is None is skipped); ``fullgraph``: refuse graph breaks (see the module docstring).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        switch: CompileSwitch,
        dynamic_dims: dict[int, Sequence[int]] | None = None,
        *,
        fullgraph: bool = False,
    ) -> None:
        self.fn = fn
        self.switch = switch
        self.dynamic_dims = dict(dynamic_dims or {})
        self.fullgraph = fullgraph
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        if not self.switch.enabled or torch.compiler.is_compiling():
            return self.fn(*args)  # (inside an outer torch.compile, dynamo traces the plain function)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, fullgraph=self.fullgraph)
        for index, dims in self.dynamic_dims.items():
            for dim in dims if args[index] is not None else ():
                torch._dynamo.maybe_mark_dynamic(args[index], dim)
        try:
            with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                return self._compiled(*args)
        except Exception as err:  # any compiler failure means: run eagerly
            self.switch.fail(err)
            return self.fn(*args)

    def __getstate__(self) -> dict[str, Any]:
        # The compiled wrapper is not picklable (and is rebuilt on the first call anyway).
        return {**self.__dict__, "_compiled": None}

    def __repr__(self) -> str:
        return f"MaybeCompiled({getattr(self.fn, '__qualname__', self.fn)}, {self.switch})"
