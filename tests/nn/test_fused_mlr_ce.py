"""The fused Lorentz MLR + cross-entropy (nn/fused_mlr_ce.py): float64 gradcheck, equality with the plain head
+ cross-entropy (float32 and float64, ignored rows, block sizes that do and do not divide V), no [N, V]
tensor kept for the backward, and its input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.nn import functional as F

from lorentz_rag.geometry import lorentz
from lorentz_rag.nn import LorentzMLR
from lorentz_rag.nn.fused_mlr_ce import block_size_for, lorentz_mlr_cross_entropy


class _HeadLoss(nn.Module):
    """``head.loss`` as a module's forward, so ``torch.func.functional_call`` can swap ``z`` and ``a``."""

    def __init__(self, head: LorentzMLR, block_size: int | None, fused: bool) -> None:
        super().__init__()
        self.head, self.block_size, self.fused = head, block_size, fused

    def forward(self, xs: torch.Tensor, c: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = lorentz.lift(xs, c)
        if self.fused:
            return self.head.loss(x, c, labels, block_size=self.block_size)
        keep = labels != -100
        return F.cross_entropy(self.head(x[keep], c), labels[keep])


def _head(d: int, v: int, dtype: torch.dtype, seed: int = 0) -> LorentzMLR:
    torch.manual_seed(seed)
    head = LorentzMLR(d, v).to(dtype)
    with torch.no_grad():
        head.z.normal_(0, 0.7)
        head.a.uniform_(-1.0, 1.0)
    return head


def _labels(n: int, v: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::4] = -100  # every fourth row ignored
    return labels


@pytest.mark.parametrize("block_size", [1, 4, 11, 64])
def test_gradcheck_fused_function_float64(block_size):
    torch.manual_seed(0)
    points = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    normals = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    k = (torch.rand(11, dtype=torch.float64) + 0.3).requires_grad_(True)
    labels = _labels(7, 11)
    assert gradcheck(
        lambda p, w, kk: lorentz_mlr_cross_entropy(p, w, kk, labels, block_size=block_size),
        (points, normals, k),
    )


@pytest.mark.parametrize("block_size", [3, 13])
def test_gradcheck_head_loss_float64_wrt_points_parameters_and_curvature(block_size):
    """Through LorentzMLR.loss: gradients reach the space coordinates, z, a and the curvature c."""
    head = _head(4, 13, torch.float64)
    module = _HeadLoss(head, block_size, fused=True)
    xs = (torch.randn(6, 4, dtype=torch.float64) * 1.5).requires_grad_(True)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    z = head.z.detach().clone().requires_grad_(True)
    a = head.a.detach().clone().requires_grad_(True)
    labels = _labels(6, 13, seed=1)

    def loss(xs, c, z, a):
        return torch.func.functional_call(module, {"head.z": z, "head.a": a}, (xs, c, labels))

    assert gradcheck(loss, (xs, c, z, a))


def _loss_and_grads(head, xs, c, labels, fused, block_size=None):
    xs = xs.detach().clone().requires_grad_(True)
    c = c.detach().clone().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    loss = _HeadLoss(head, block_size, fused)(xs, c, labels)
    loss.backward()
    return loss.detach(), [xs.grad, c.grad, head.z.grad.clone(), head.a.grad.clone()]


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"), [(torch.float64, 1e-10, 1e-12), (torch.float32, 2e-5, 2e-6)]
)
@pytest.mark.parametrize("block_size", [7, 64, 300, None])
def test_fused_equals_plain_head_and_cross_entropy(dtype, rtol, atol, block_size):
    """V = 300: block 7 does not divide it, 300 is one block, None picks the default."""
    head = _head(16, 300, dtype, seed=2)
    xs = torch.randn(40, 16, dtype=dtype) * 2.0
    xs[0] *= 20.0  # one point far out (x0 ~ 150)
    c = torch.tensor(1.3, dtype=dtype)
    labels = _labels(40, 300, seed=3)
    plain, plain_grads = _loss_and_grads(head, xs, c, labels, fused=False)
    fused, fused_grads = _loss_and_grads(head, xs, c, labels, fused=True, block_size=block_size)
    assert fused.dtype == dtype
    torch.testing.assert_close(fused, plain, rtol=rtol / 10, atol=0)
    for name, got, want in zip(("xs", "c", "z", "a"), fused_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=name)
    assert fused_grads[0][labels == -100].abs().max() == 0  # ignored rows get no gradient


def test_bf16_inputs_compute_in_float32():
    head = _head(8, 50, torch.float32)
    x = lorentz.lift(torch.randn(9, 8), 1.0)
    labels = _labels(9, 50)
    want = head.loss(x, 1.0, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head.loss(x, 1.0, labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # autocast off inside: the same arithmetic
    points, normals, k = (t.detach().requires_grad_(True) for t in head._points_normals_k(
        x[:, 1:], torch.tensor(1.0), torch.tensor(1.0)))  # fmt: skip
    low = lorentz_mlr_cross_entropy(points.bfloat16(), normals.bfloat16(), k.bfloat16(), labels)
    assert low.dtype == torch.float32
    ref = lorentz_mlr_cross_entropy(
        points.bfloat16().float(), normals.bfloat16().float(), k.bfloat16().float(), labels
    )
    torch.testing.assert_close(low, ref, rtol=1e-6, atol=0)
    low.backward()
    assert points.grad.dtype == torch.float32 and torch.isfinite(points.grad).all()


def test_no_n_by_v_tensor_is_saved_for_backward():
    """The plain head keeps [N, V] tensors for its backward; the fused loss keeps nothing that large."""
    head = _head(8, 500, torch.float32)
    x = lorentz.lift(torch.randn(64, 8), 1.0).requires_grad_(True)
    labels = torch.randint(0, 500, (64,))

    def largest_saved(fn) -> int:
        sizes = [0]

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return max(sizes)

    assert largest_saved(lambda: F.cross_entropy(head(x, 1.0), labels)) >= 64 * 500
    # The largest saved tensor is the per-class normals [V, d+1] (parameter-sized), not [N, V].
    assert largest_saved(lambda: head.loss(x, 1.0, labels, block_size=100)) == 500 * 9


def test_all_rows_ignored_gives_zero_with_graph():
    head = _head(4, 10, torch.float32)
    x = lorentz.lift(torch.randn(3, 4), 1.0).requires_grad_(True)
    loss = head.loss(x, 1.0, torch.full((3,), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad.abs().max() == 0 and head.z.grad.abs().max() == 0
    empty = head.loss(x[:0], 1.0, torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0


def test_bad_inputs_are_refused():
    points, normals, k = torch.randn(3, 5), torch.randn(10, 5), torch.rand(10) + 0.5
    with pytest.raises(ValueError, match=r"label 10 is outside \[0, 10\)"):
        lorentz_mlr_cross_entropy(points, normals, k, torch.tensor([0, 10, -100]))
    with pytest.raises(ValueError, match="label -3 is outside"):
        lorentz_mlr_cross_entropy(points, normals, k, torch.tensor([0, -3, 1]))
    with pytest.raises(ValueError, match="block_size=0"):
        lorentz_mlr_cross_entropy(points, normals, k, torch.tensor([0, 1, 2]), block_size=0)
    with pytest.raises(ValueError, match=r"k \(9,\) must be \[V=10\]"):
        lorentz_mlr_cross_entropy(points, normals, k[:9], torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="must be \\[N, D\\] and \\[V, D\\]"):
        lorentz_mlr_cross_entropy(points, normals[:, :4], k, torch.tensor([0, 1, 2]))


def test_default_block_size():
    assert block_size_for(300, 30522) == (1 << 19) // 300  # 2 MiB float32 blocks on CPU
    assert block_size_for(2458, 50368, "cuda") == (1 << 25) // 2458  # 128 MiB on an accelerator
    assert block_size_for(10_000, 30522) == 128  # at least 128 classes
    assert block_size_for(4, 50) == 50  # at most V


@pytest.mark.slow
def test_compiled_block_kernels_match_eager():
    """With the compile switch on, each block's passes run as inductor kernels (V = 300 in blocks of 64:
    four full blocks and a narrower last one, one graph each for forward and backward)."""
    head = _head(16, 300, torch.float32, seed=5)
    xs = torch.randn(40, 16) * 2.0
    c = torch.tensor(1.1)
    labels = _labels(40, 300, seed=6)
    eager, eager_grads = _loss_and_grads(head, xs, c, labels, fused=True, block_size=64)
    head._kernels.switch.enabled = True
    compiled, compiled_grads = _loss_and_grads(head, xs, c, labels, fused=True, block_size=64)
    assert head._kernels.switch.enabled, head._kernels.switch.failure  # compiled, no fall-back
    assert (
        head._fused_kernels.lse._compiled is not None and head._fused_kernels.backward_._compiled is not None
    )
    torch.testing.assert_close(compiled, eager, rtol=2e-6, atol=0)
    for name, got, want in zip(("xs", "c", "z", "a"), compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6, msg=name)
