"""HyTE-FH's optional torch.compile path (HyteFHConfig.compile): the compiled blocks and MLR head give the
eager results within float32 rounding (values and gradients, with padding), and a failure to compile falls
back to eager with exactly one warning. The other HyTE-FH tests run eagerly (the default)."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch

from lorentz_rag.geometry import pooling
from lorentz_rag.models.hyte_fh import HyteFHConfig, HyteFHForMaskedLM
from lorentz_rag.models.hyte_fh_encoder import HyteFH
from lorentz_rag.models.settings import ModelSettings
from lorentz_rag.nn import _compile
from lorentz_rag.nn.mlr import _MLRFromProducts, _PointwiseKernels

PAD = 0


def _mlm(compile_: bool) -> HyteFHForMaskedLM:
    torch.manual_seed(0)
    config = HyteFHConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=64, pad_token_id=PAD, curvature=0.8, compile=compile_,
    )  # fmt: skip
    return HyteFHForMaskedLM(config).train()


def _batch(length: int):
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(1, 40, (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length // 2 :] = 0  # right padding
    mask[2, :2] = 0  # left padding
    ids = ids.masked_fill(mask == 0, PAD)
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.4) & (mask > 0), ids, -100)
    return ids, mask, labels


def _run(model: HyteFHForMaskedLM, ids, mask, labels):
    model.zero_grad(set_to_none=True)
    out = model(ids, mask, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


def test_default_is_eager():
    assert HyteFHConfig().compile is False
    model = HyteFHForMaskedLM(
        HyteFHConfig(vocab_size=40, hidden_size=8, num_attention_heads=2, pad_token_id=0)
    )
    assert not model.model.compile_switch.enabled
    assert model.head._kernels.switch is model.model.compile_switch


@pytest.mark.slow  # compiles a block and the MLM head: ~20 s with a warm inductor cache, 1-2 min cold
def test_compiled_matches_eager_values_and_gradients():
    eager = _mlm(False)
    compiled = copy.deepcopy(eager)
    compiled.model.compile_switch.enabled = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent fallback to eager would pass otherwise
        for length in (11, 7):  # a second length reuses the compiled graphs (dynamic batch/sequence dims)
            ids, mask, labels = _batch(length)
            logits_e, loss_e, grads_e = _run(eager, ids, mask, labels)
            logits_c, loss_c, grads_c = _run(compiled, ids, mask, labels)
            torch.testing.assert_close(logits_c, logits_e, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
            assert grads_c.keys() == grads_e.keys() and "model.curvature.log_c" in grads_e
            for name, g in grads_e.items():
                scale = g.abs().max().clamp_min(1e-12)
                torch.testing.assert_close(grads_c[name] / scale, g / scale, rtol=1e-4, atol=1e-5, msg=name)
            # The trunk's points too, padding included (grad mode: the training graph, no new compile).
            points_c, points_e = compiled.model(ids, mask), eager.model(ids, mask)
            assert torch.isfinite(points_c).all()
            torch.testing.assert_close(points_c, points_e, rtol=1e-5, atol=1e-5)
    # The compiled asinh kernels over the float32 range (the eager path's own test covers 1e-30..1e30 too).
    mag = torch.logspace(-30, 30, 601)
    u = torch.cat([mag, -mag, torch.tensor([0.0, 1e37])]).requires_grad_(True)
    ones, zeros = torch.ones(40), torch.zeros(40)  # scale 1, shift 0, k 1: the logits are asinh(u)
    out = _MLRFromProducts.apply(
        u[:, None], torch.ones(40, 1), ones, torch.zeros(u.numel()), zeros, ones, compiled.head._kernels
    )
    assert out.shape == (u.numel(), 40)
    exact = torch.asinh(u.detach().double())
    rel = ((out[:, 7].detach().double() - exact).abs() / exact.abs().clamp_min(1e-300)).max()
    assert rel < 1e-6, rel
    out[:, 7].sum().backward()
    # 1/cosh(out / k): relative error ~ |asinh(u)| eps32 (<= 69 * 1.2e-7 at u = 1e30).
    expected = (1 + u.detach().double() ** 2).rsqrt()
    torch.testing.assert_close(u.grad.double(), expected, rtol=1e-5, atol=1e-45)
    assert compiled.model.compile_switch.enabled and compiled.model.compile_switch.failure is None
    assert (
        compiled.model._graph._compiled is not None and compiled.head._kernels.forward_._compiled is not None
    )


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_compile(fn, *args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("inductor: no C++ compiler found (forced by the test)")

        return run

    monkeypatch.setattr(_compile.torch, "compile", broken_compile)
    eager = _mlm(False)
    model = copy.deepcopy(eager)
    model.model.compile_switch.enabled = True
    ids, mask, labels = _batch(9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _run(model, ids, mask, labels)
        again = _run(model, ids, mask, labels)  # no second warning: the switch is off for every part
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert (
        len(messages) == 1
        and "running HyTE-FH eagerly" in messages[0]
        and "forced by the test" in messages[0]
    )
    switch = model.model.compile_switch
    assert not switch.enabled and "no C++ compiler" in switch.failure
    assert model.head._kernels.switch is switch
    want = _run(eager, ids, mask, labels)
    for a, b in ((got, want), (again, want)):
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_compiled_wrapper_pickles_without_its_compiled_function():
    m = _compile.MaybeCompiled(len, _compile.CompileSwitch(True))
    m._compiled = lambda *a: None  # not picklable
    clone = pickle.loads(pickle.dumps(m))
    assert clone._compiled is None and clone.switch.enabled
    clone.switch.enabled = False
    assert clone([1, 2]) == 2


def test_product_form_head_gradcheck_float64():
    """The compiled path's autograd function (run here with its plain kernels) has exact gradients."""
    torch.manual_seed(5)
    kernels = _PointwiseKernels(_compile.CompileSwitch(False))
    f64 = {"dtype": torch.float64}
    args = (
        torch.randn(4, 3, **f64),  # xs
        torch.randn(6, 3, **f64),  # z
        torch.rand(6, **f64) + 0.5,  # scale
        torch.rand(4, **f64) + 1.0,  # x0
        torch.randn(6, **f64),  # shift
        torch.rand(6, **f64) + 0.1,  # k
    )
    args = tuple(a.requires_grad_(True) for a in args)
    assert torch.autograd.gradcheck(lambda *a: _MLRFromProducts.apply(*a, kernels), args)


def _encoder() -> HyteFH:
    torch.manual_seed(1)
    config = HyteFHConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=64, pad_token_id=PAD, curvature=1.3,
    )  # fmt: skip
    settings = ModelSettings("hyte_fh", "outward_einstein_midpoint", "geodesic", 17, pooling_p=2.0)
    return HyteFH(config, None, settings).train()


def _pooled_step(model: HyteFH, ids, mask):
    model.zero_grad(set_to_none=True)
    out = model(ids, mask)
    weights = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), {
        n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_eager_trunk_with_pooling_is_bit_identical_to_pooling_the_points():
    """The embedding model's one-function path (trunk + pooling) gives exactly what pooling the trunk's
    points did before, values and gradients (the eager path is unchanged)."""
    model = _encoder()
    ids, mask, _ = _batch(9)
    got, grads = _pooled_step(model, ids, mask)

    model.zero_grad(set_to_none=True)
    points = model.model(ids, mask)
    want = pooling.pool("outward_einstein_midpoint", points, mask, model.curvature(), p=2.0)
    weights = torch.linspace(-1.0, 1.0, want.numel()).reshape(want.shape)
    (want * weights).sum().backward()
    assert torch.equal(got, want.detach())
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        assert torch.equal(grads[name], p.grad), name
    with pytest.raises(ValueError, match=r"no unmasked token \(batch rows \[1\]\)"):
        model(ids, torch.stack([mask[0], torch.zeros_like(mask[1]), mask[2]]))


@pytest.mark.slow  # compiles the whole trunk with the pooling: ~20 s with a warm inductor cache, minutes cold
def test_compiled_trunk_with_pooling_is_one_graph_without_recompiles():
    """compile=True: embeddings, blocks, final norm and the float64 OEM pooling are one graph (fullgraph: a
    graph break would fail the compile and warn), another batch size and length reuse it (a recompile
    raises), and values and gradients equal eager's to float32 rounding, padding included."""
    eager = _encoder()
    compiled = copy.deepcopy(eager)
    compiled.model.compile_switch.enabled = True
    torch._dynamo.utils.counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would pass silently otherwise
        for index, (rows, length) in enumerate(((3, 11), (2, 7), (3, 5))):
            ids, mask, _ = _batch(length)
            ids, mask = ids[:rows].contiguous(), mask[:rows].contiguous()
            with torch._dynamo.config.patch(error_on_recompile=index > 0):
                got, grads_c = _pooled_step(compiled, ids, mask)
            want, grads_e = _pooled_step(eager, ids, mask)
            assert got.shape == (rows, 17) and got.dtype == torch.float32
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert grads_c.keys() == grads_e.keys() and "model.curvature.log_c" in grads_e
            for name, g in grads_e.items():
                scale = g.abs().max().clamp_min(1e-12)
                torch.testing.assert_close(grads_c[name] / scale, g / scale, rtol=1e-4, atol=1e-5, msg=name)
            assert compiled.model.last_radius_stats.keys() == eager.model.last_radius_stats.keys()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert compiled.model.compile_switch.failure is None and compiled.model._graph._compiled is not None
