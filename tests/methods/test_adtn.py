"""The ADTN generator (methods/adtn/generator.py): contraction against an explicit construction, exact
parameter counts, gradients, checkpointing, scale folding, the rank-1 start and the pre-fit."""
import math

import pytest
import torch
from torch import nn

from methods.adtn.generator import ADTNGenerator, num_sites, param_count, sublayer_plan
from methods.adtn.prefit import prefit


def explicit(gen: ADTNGenerator) -> torch.Tensor:
    """The d^Q output from d^Q x d^Q matrices: I (x) G (x) I per gate, applied to e_0^{(x)Q}.
    First-layer even gates are full matrices whose first column is the stored vector and whose
    other columns are random (they act on e_0 (x) e_0 only, so those columns must not matter)."""
    q, d, dt = gen.q, gen.d, torch.float64
    e0 = torch.zeros(d, dtype=dt)
    e0[0] = 1
    state = e0
    for _ in range(q - 1):
        state = torch.kron(state, e0)
    acts = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda x: x,
            "leaky_relu": lambda x: nn.functional.leaky_relu(x, gen.negative_slope)}
    for layer in range(gen.depth):
        for parity in (0, 1):
            for b in range(parity, q - 1, 2):
                if layer == 0 and parity == 0:
                    g = torch.randn(d * d, d * d, dtype=dt)
                    g[:, 0] = gen.first_even[b // 2]
                elif layer == 0:
                    g = gen.first_odd[(b - 1) // 2]
                else:
                    g = gen.gates[(layer - 1) * (q - 1) + b]
                op = torch.kron(torch.kron(torch.eye(d ** b, dtype=dt), g), torch.eye(d ** (q - b - 2), dtype=dt))
                state = op @ state
        if layer < gen.depth - 1:
            state = acts[gen.activation](state)
    return state


def make(numel, depth, fuse=2, **kw) -> ADTNGenerator:
    torch.manual_seed(numel * 7 + depth)
    return ADTNGenerator(numel, depth, fuse=fuse, init=kw.pop("init", "orthogonal"), dtype=torch.float64, **kw)


def set_fuse(gen: ADTNGenerator, fuse: int) -> None:
    gen.fuse = fuse
    gen._plans = {p: sublayer_plan(gen.q, p, fuse) for p in (0, 1)}


@pytest.mark.parametrize("q", [2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_matches_explicit_construction(q, depth):
    gen = make(2 ** q, depth)
    with torch.no_grad():
        ref = explicit(gen)
        if depth > 1 and q >= 4:  # the activation has work to do
            gen.activation = "identity"
            assert not torch.allclose(explicit(gen), ref, atol=1e-3)
            gen.activation = "relu"
        for impl, fuse in [("loop", 1), ("fused", 1), ("fused", 2), ("fused", 3)]:
            set_fuse(gen, fuse)
            assert torch.allclose(gen.full(impl), ref, atol=1e-6, rtol=0), (impl, fuse)
    set_fuse(gen, 2)
    with_grad = gen.full("fused").detach()  # the autograd path (no preallocated buffers)
    assert torch.allclose(with_grad, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("q,depth,d", [(3, 2, 3), (4, 2, 3), (3, 1, 4)])
def test_local_dimension_above_two(q, depth, d):
    gen = make(d ** q, depth, local_dim=d)
    assert gen.q == q
    assert sum(p.numel() for p in gen.parameters()) == param_count(q, depth, d)
    with torch.no_grad():
        ref = explicit(gen)
        assert torch.allclose(gen.full("fused"), ref, atol=1e-6, rtol=0)
        assert torch.allclose(gen.full("loop"), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("activation", ["leaky_relu", "tanh", "identity"])
def test_other_activations_match_explicit(activation):
    gen = make(2 ** 6 - 3, 3, activation=activation, negative_slope=0.2)
    with torch.no_grad():
        assert torch.allclose(gen.full(), explicit(gen), atol=1e-6, rtol=0)


def test_fused_equals_loop_at_larger_q():
    gen = make(2 ** 13 - 100, 3)
    out = gen()
    assert out.shape == (2 ** 13 - 100,)
    assert torch.allclose(out, gen("loop"), atol=1e-12, rtol=1e-10)


def test_first_n_entries_are_the_output():
    gen = make(1000, 2)
    assert gen.q == 10
    full = gen.full().detach()
    assert torch.equal(gen().detach(), full[:1000])


def test_num_sites():
    assert num_sites(2 ** 10) == 10 and num_sites(2 ** 10 + 1) == 11 and num_sites(2 ** 10 - 1) == 10
    assert num_sites(1) == 2 and num_sites(3) == 2 and num_sites(27, 3) == 3 and num_sites(28, 3) == 4


def test_parameter_count_formula():
    for q in range(2, 27):
        for depth in range(1, 7):
            formula = 4 * (q // 2) + 16 * (q - 1 - q // 2) + 16 * (q - 1) * (depth - 1)
            assert param_count(q, depth) == formula
            gen = ADTNGenerator(2 ** q, depth)  # building allocates the gates only
            assert gen.q == q
            assert sum(p.numel() for p in gen.parameters()) == formula, (q, depth)


def test_paper_424_for_the_vgg_head():
    gens = [ADTNGenerator(512 * 4096, 1), ADTNGenerator(4096 * 4096, 1)]
    assert [g.q for g in gens] == [21, 24]
    assert [sum(p.numel() for p in g.parameters()) for g in gens] == [200, 224]


def test_gradcheck():
    from torch.func import functional_call

    for impl in ("fused", "loop"):
        gen = make(2 ** 5 - 3, 3, impl=impl)
        names = [n for n, _ in gen.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_() for p in gen.parameters())

        def f(*ps):
            return functional_call(gen, dict(zip(names, ps)), ())

        assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["fused", "loop"])
def test_checkpointed_gradients_agree(impl):
    gen = make(2 ** 10 - 7, 3, impl=impl)
    weights = torch.randn(2 ** 10 - 7, dtype=torch.float64)
    grads = []
    for ckpt in (False, True):
        gen.zero_grad()
        (gen(checkpoint=ckpt) * weights).sum().backward()
        grads.append([p.grad.clone() for p in gen.parameters() if p.numel()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)


def test_checkpoint_auto_setting():
    assert not ADTNGenerator(2 ** 12, 2).use_checkpoint()
    assert ADTNGenerator(2 ** 12, 2, checkpoint=True).use_checkpoint()
    big = ADTNGenerator(2 ** 20, 2)
    assert big.use_checkpoint()
    with torch.no_grad():
        assert not big.use_checkpoint()
    # one brick layer: recomputing it would save no memory, only add a forward
    assert not ADTNGenerator(2 ** 20, 1).use_checkpoint()
    assert ADTNGenerator(2 ** 20, 1, checkpoint=True).use_checkpoint()


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("factor", [3.5, -0.2])
def test_scale_is_folded_into_the_gates(activation, depth, factor):
    gen = make(2 ** 7 - 1, depth, activation=activation)
    before = gen().detach()
    n_params = sum(p.numel() for p in gen.parameters())
    gen.scale_(factor)
    assert sum(p.numel() for p in gen.parameters()) == n_params
    assert torch.allclose(gen().detach(), factor * before, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("q", [8, 9])
@pytest.mark.parametrize("depth", [1, 3])
def test_rank1_start_is_exact_on_a_rank1_target(q, depth):
    """A Kronecker product of random pair vectors (and a last-site vector for odd Q), with
    mixed signs, is reproduced exactly through the ReLUs (signs in the last layer)."""
    torch.manual_seed(q)
    target = torch.ones(1, dtype=torch.float64)
    for n in [4] * (q // 2) + [2] * (q % 2):
        target = torch.kron(target, torch.randn(n, dtype=torch.float64))
    gen = ADTNGenerator(2 ** q, depth, dtype=torch.float64)
    err = gen.init_rank1_(target, noise=0.0)
    assert err < 1e-6  # computed as sqrt(|T|^2 - lambda^2): cancellation floor ~1e-8
    assert torch.allclose(gen().detach(), target, atol=1e-9, rtol=0)


def test_fresh_generator_at_q24_m6_is_finite_and_order_one():
    torch.manual_seed(0)
    gen = ADTNGenerator(2 ** 24, 6)
    assert sum(p.numel() for p in gen.parameters()) == param_count(24, 6)
    with torch.no_grad():
        out = gen()
    assert out.shape == (2 ** 24,)
    assert torch.isfinite(out).all()
    assert 0.1 < float(out.norm()) < 10


def test_prefit_recovers_an_adtn_target():
    """Seeded: Adam + L-BFGS polish from the rank-1 start reach < 1e-3 on targets that a
    depth-1 ADTN of the same shape made (deeper ReLU targets are not reliably recovered)."""
    for seed in range(3):
        torch.manual_seed(100 + seed)
        target = ADTNGenerator(2 ** 10 - 5, 1, init="orthogonal", dtype=torch.float64)
        with torch.no_grad():
            w = target()
        torch.manual_seed(seed)
        gen = ADTNGenerator(2 ** 10 - 5, 1, dtype=torch.float64)
        fit = prefit(gen, w, max_steps=2000, lr=0.01, patience=100, polish=300)
        got = float((gen().detach() - w).norm() / w.norm())
        assert math.isclose(got, fit["rel_error"], rel_tol=1e-6, abs_tol=1e-12)
        assert got < 1e-3, (seed, fit)


def test_prefit_improves_and_keeps_the_best():
    torch.manual_seed(0)
    w = torch.randn(20, 30).cumsum(1)  # smooth-ish rows: some structure to find
    for start in ("rank1", "lsq"):
        gen = ADTNGenerator(w.numel(), 3)
        fit = prefit(gen, w, max_steps=200, lr=0.01, patience=20, start=start)
        assert fit["rel_error"] <= fit["init_rel_error"] + 1e-6
        assert fit["rel_error"] < 0.9
        assert 0 < fit["steps"] <= 200
        got = float((gen().detach() - w.reshape(-1)).norm() / w.norm())
        assert math.isclose(got, fit["rel_error"], rel_tol=1e-4)


def test_lsq_start_is_the_best_multiple_of_the_generated_tensor():
    """The 'lsq' start folds <T, W> / ||T||^2 into the gates: its error is sqrt(1 - cos^2(T, W)),
    below 1 for any output, and no other multiple of T starts lower."""
    torch.manual_seed(3)
    w = torch.randn(16, 24, dtype=torch.float64)
    for init in ("orthogonal", "identity"):
        torch.manual_seed(4)
        gen = ADTNGenerator(w.numel(), 2, init=init, dtype=torch.float64)
        with torch.no_grad():
            t = gen().clone()
        cos2 = float((t @ w.reshape(-1)) ** 2 / (t.pow(2).sum() * w.pow(2).sum()))
        fit = prefit(gen, w, max_steps=0, start="lsq")
        assert math.isclose(fit["init_rel_error"], math.sqrt(1 - cos2), rel_tol=1e-9)
        assert fit["init_rel_error"] < 1.0
        for c in (0.5, 2.0, -1.0):  # other multiples of the LS-scaled output are worse
            alpha = float(t @ w.reshape(-1) / t.pow(2).sum())
            other = float((c * alpha * t - w.reshape(-1)).norm() / w.norm())
            assert other > fit["init_rel_error"]
    with pytest.raises(ValueError, match="valid: rank1, lsq, none"):
        prefit(ADTNGenerator(12, 2), torch.ones(12), start="rescale")


def test_prefit_zero_target_and_bad_shapes():
    gen = ADTNGenerator(12, 2)
    assert prefit(gen, torch.zeros(12))["rel_error"] == 0.0
    assert float(gen().detach().abs().max()) == 0.0
    with pytest.raises(ValueError):
        prefit(gen, torch.zeros(13))
    with pytest.raises(ValueError):
        ADTNGenerator(12, 0)
    with pytest.raises(ValueError):
        ADTNGenerator(12, 2, activation="swish")


def test_sgd_gain_is_the_top_eigenvalue_of_jtj():
    from torch.func import functional_call, jacrev

    from methods.adtn.prefit import sgd_gain

    for depth, activation in [(1, "relu"), (3, "relu"), (2, "tanh")]:
        gen = make(2 ** 6 - 3, depth, activation=activation)
        names = [n for n, p in gen.named_parameters() if p.numel()]
        ps = [p.detach() for n, p in gen.named_parameters() if p.numel()]
        jac = jacrev(lambda *a: functional_call(gen, dict(zip(names, a)), ()), argnums=tuple(range(len(ps))))(*ps)
        jac = torch.cat([j.reshape(j.shape[0], -1) for j in jac], 1)
        top = float(torch.linalg.eigvalsh(jac.T @ jac)[-1])
        assert math.isclose(sgd_gain(gen, iters=100), top, rel_tol=1e-6)


def test_grad_scale_scales_gradients_only():
    gen = make(2 ** 8 - 1, 3)
    weights = torch.randn(2 ** 8 - 1, dtype=torch.float64)
    out1 = gen()
    (out1 * weights).sum().backward()
    g1 = [p.grad.clone() for p in gen.parameters()]
    gen.zero_grad()
    gen.grad_scale.fill_(0.25)
    for ckpt in (False, True):
        gen.zero_grad()
        out2 = gen(checkpoint=ckpt)
        assert torch.equal(out1.detach(), out2.detach())
        (out2 * weights).sum().backward()
        for a, p in zip(g1, gen.parameters()):
            assert torch.allclose(p.grad, 0.25 * a, atol=1e-14, rtol=1e-12)
    assert "grad_scale" in gen.state_dict() and "grad_scale" not in dict(gen.named_parameters())


# --- pre-fit schedule and the masked loss ------------------------------------------------------
def _count_adam_steps(monkeypatch):
    """Record the lr of every Adam step the pre-fit takes."""
    lrs = []
    real = torch.optim.Adam.step

    def step(self, *a, **kw):
        lrs.append(self.param_groups[0]["lr"])
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return lrs


def test_cosine_schedule_runs_exactly_max_steps_adam_steps(monkeypatch):
    torch.manual_seed(0)
    w = torch.randn(20, 30).cumsum(1)
    lrs = _count_adam_steps(monkeypatch)
    gen = ADTNGenerator(w.numel(), 2)
    fit = prefit(gen, w, max_steps=37, lr=0.02, schedule="cosine", polish=0)
    assert fit["steps"] == fit["adam_steps"] == len(lrs) == 37 and fit["restarts"] == 0
    assert lrs == pytest.approx([0.02 * 0.5 * (1 + math.cos(math.pi * t / 37)) for t in range(37)])
    assert fit["rel_error"] <= fit["init_rel_error"] + 1e-6  # the best iterate is kept
    assert math.isclose(float((gen().detach() - w.reshape(-1)).norm() / w.norm()), fit["rel_error"], rel_tol=1e-4)


def test_plateau_schedule_is_still_reachable(monkeypatch):
    """The old rule stops Adam at the 4th plateau, long before ``max_steps``; the cosine
    schedule on the same target runs all of them."""
    torch.manual_seed(0)
    w = torch.randn(20, 30).cumsum(1)
    steps = {}
    for schedule in ("plateau", "cosine"):
        lrs = _count_adam_steps(monkeypatch)
        torch.manual_seed(0)
        gen = ADTNGenerator(w.numel(), 2)
        fit = prefit(gen, w, max_steps=300, lr=0.01, patience=5, min_delta=0.05, schedule=schedule)
        steps[schedule] = (fit["steps"], fit["adam_steps"], len(lrs))
        assert fit["rel_error"] <= fit["init_rel_error"] + 1e-6
    assert steps["cosine"] == (300, 300, 300)
    assert steps["plateau"][1] == steps["plateau"][2] < 60
    with pytest.raises(ValueError):
        prefit(ADTNGenerator(12, 2), torch.ones(12), schedule="linear")


def test_masked_loss_ignores_the_padding():
    """A generated tensor with a large padding region: its crop is fitted exactly (loss 0), the
    loss has no gradient on the padding entries, and a pre-fit on the crop of an ADTN target
    reaches it although the padding cannot be zero (an unmasked fit would pay for it)."""
    from methods.adtn.layout import plan_layout

    torch.manual_seed(3)
    shape = (6, 5, 5)  # 150 entries, Q = 8: (6)(5)(5) needs 9 sites, so (6)(25) in (8)(32)
    layout = plan_layout(shape, num_sites(150), 2)
    assert layout.kind == "padded" and layout.padded == (8, 32)
    source = ADTNGenerator(150, 1, init="orthogonal", dtype=torch.float64)
    with torch.no_grad():
        full = source.full()
    w = layout.read(full)
    mask = layout.mask()
    assert float(full[~mask].norm()) > 0.3 * float(full.norm())  # the padding matters if not masked
    gen = copy_gen(source)
    fit = prefit(gen, w, max_steps=0, start="none", layout=layout)
    assert fit["rel_error"] < 1e-12
    unmasked = float((full - layout.embed(w)).norm() / w.norm())
    assert unmasked > 0.5
    state = gen.full().detach().requires_grad_()
    ((layout.read(state) - 0.5 * w) ** 2).sum().backward()
    assert float(state.grad[~mask].abs().max()) == 0.0 and float(state.grad[mask].abs().max()) > 0
    torch.manual_seed(0)
    fresh = ADTNGenerator(150, 1, dtype=torch.float64)
    fit = prefit(fresh, w, max_steps=1000, lr=0.01, polish=300, layout=layout)
    assert fit["rel_error"] < 1e-3, fit
    assert torch.allclose(layout.read(fresh.full()).detach(), w, atol=1e-3 * float(w.abs().max()))


def copy_gen(gen: ADTNGenerator) -> ADTNGenerator:
    import copy

    return copy.deepcopy(gen)
