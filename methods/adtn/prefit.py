"""Fitting an ADTN generator (``methods.adtn.generator``) to a layer's weight.

``prefit`` (Adam on ||T - W||^2 / ||W||^2 over the real entries of a layout, on a
fixed cosine schedule or until a plateau, then optional L-BFGS) starts from the current gates
times the least-squares factor (``start='lsq'``) or from ``init_rank1_``: the weight's best
Kronecker-rank-1 approximation over the site pairs, which the first layer represents exactly
(signs carried by the last layer through the ReLUs). ``sgd_gain`` measures
how much faster than a dense weight the generated weight moves under SGD; the buffer
``grad_scale`` can compensate.
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from methods.adtn.generator import ADTNGenerator

if TYPE_CHECKING:
    from methods.adtn.layout import Layout


def sgd_gain(gen: ADTNGenerator, iters: int = 20, seed: int = 0, layout: "Layout | None" = None) -> float:
    """Largest eigenvalue of J^T J, J = d(generated weights)/d(gates) (power iteration on
    double-backward products; ``grad_scale`` not applied; ``layout``: only the real entries).

    Under SGD a gate step -lr * J^T g moves the weight by -lr * J J^T g, where a dense weight
    moves by -lr * g: this is the worst-case factor by which the generated weight moves faster
    than a dense one under the same recipe (stability needs lr * curvature * gain < 2)."""
    params = [p for p in gen.parameters() if p.numel()]
    saved = gen.grad_scale.clone()
    gen.grad_scale.fill_(1.0)
    try:
        with torch.enable_grad():
            out = gen(checkpoint=False) if layout is None else layout.read(gen.full(checkpoint=False)).reshape(-1)
            probe = torch.zeros_like(out, requires_grad=True)
            jt_probe = torch.autograd.grad(out, params, probe, create_graph=True)  # J^T v, linear in v
            g = torch.Generator(device="cpu").manual_seed(seed)
            u = [torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in params]
            lam = 0.0
            for _ in range(iters):
                norm = torch.sqrt(sum(x.pow(2).sum() for x in u))
                u = [x / norm for x in u]
                ju = torch.autograd.grad(jt_probe, probe, u, retain_graph=True)[0]  # J u
                jtju = torch.autograd.grad(out, params, ju, retain_graph=True)  # J^T J u
                lam = float(sum((a * b).sum() for a, b in zip(u, jtju)))
                u = [x.detach() for x in jtju]
    finally:
        gen.grad_scale.copy_(saved)
    return lam



SCHEDULES = ("cosine", "plateau")
PREFIT_STARTS = ("rank1", "lsq", "none")


def prefit(gen: ADTNGenerator, target: torch.Tensor, max_steps: int = 2000, lr: float = 1e-2,
           patience: int = 100, min_delta: float = 1e-4, lr_decay: float = 0.3, max_decays: int = 3,
           start: str = "rank1", polish: int = 0, start_noise: float = 0.01, schedule: str = "cosine",
           layout: "Layout | None" = None, progress: bool = True) -> dict:
    """Euclidean pre-training: Adam on ||T - W||^2 / ||W||^2, then an optional L-BFGS polish.

    ``layout`` (``methods.adtn.layout.Layout``; None = row-major, the first N entries) says
    which entries of the d^Q tensor are the weight; the loss sees those only (padding entries
    are free). ``target`` is the weight (any shape with N entries).

    ``schedule``:

    * 'cosine' (default): exactly ``max_steps`` Adam steps, lr decayed as
      0.5 (1 + cos(pi t / max_steps)). A fixed budget: the plateau rule below stopped Adam at
      ~200 steps on FC-2 while the error kept falling with more steps.
    * 'plateau': Adam until the loss plateaus: ``patience`` steps without a relative
      improvement of ``min_delta`` cut the lr by ``lr_decay``; the ``max_decays``+1-th plateau
      (or ``max_steps``) stops.

    ``start``: 'rank1' (``init_rank1_`` with ``start_noise``, on the laid-out weight),
    'lsq' (fold the least-squares factor <T, W> / ||T||^2 into the current gates: the best
    multiple of the generator's output, loss 1 - cos^2(T, W) <= 1; an earlier start matched
    the norms instead, which for an output unrelated to W is loss ~2, and Adam collapsed the
    output to zero from there on FC-2) or 'none' (the gates as they are).
    A divergence (loss doubled, or an all-zero output: every ReLU dead, no gradient) restores
    the best gates and cuts the lr by ``lr_decay`` (plateau: counts as a plateau; cosine: the
    schedule goes on, scaled). The best iterate is kept. ``polish`` > 0 then runs up to that
    many L-BFGS iterations (strong Wolfe), kept only if they lower the error: Adam's noise floor
    is around 1e-3, L-BFGS goes far below where the fit is reachable.
    Returns {'rel_error', 'steps' (schedule steps), 'adam_steps' (optimizer steps taken),
    'restarts', 'polish_evals', 'seconds', 'init_rel_error'}."""
    from methods.adtn.layout import rowmajor

    t0 = time.perf_counter()
    if schedule not in SCHEDULES:
        raise ValueError(f"prefit schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    w = target.detach().reshape(-1).to(device=gen.first_even.device, dtype=gen.first_even.dtype)
    if w.numel() != gen.numel:
        raise ValueError(f"target has {w.numel()} entries, generator makes {gen.numel}")
    if layout is None:
        layout = rowmajor((gen.numel,), gen.q, gen.d)
    if layout.numel != gen.numel or math.prod(layout.padded) != gen.d ** gen.q:
        raise ValueError(f"layout {layout.describe()} does not fit a generator of {gen.numel} entries, Q = {gen.q}")
    w = w.view(layout.shape)
    w_norm2 = w.pow(2).sum()
    empty = {"steps": 0, "adam_steps": 0, "restarts": 0, "polish_evals": 0}
    if w_norm2 == 0:
        with torch.no_grad():
            for p in gen.parameters():
                p.zero_()
        return {"rel_error": 0.0, **empty, "seconds": time.perf_counter() - t0, "init_rel_error": 0.0}
    if start not in PREFIT_STARTS:
        raise ValueError(f"prefit start {start!r}; valid: {', '.join(PREFIT_STARTS)}")

    def generated() -> torch.Tensor:
        return layout.read(gen.full())

    def objective() -> torch.Tensor:
        """||T - W||^2 / ||W||^2 over the real entries."""
        return (generated() - w).pow(2).sum() / w_norm2

    if start == "rank1" and math.isnan(gen.init_rank1_(layout.embed(w), noise=start_noise)):
        start = "lsq"  # no exact rank-1 start through this activation: identity gates, scaled
    if start == "lsq":
        with torch.no_grad():
            t = generated()
            t_norm2 = t.pow(2).sum()
            factor = (t * w).sum() / t_norm2
            if t_norm2 > 0 and torch.isfinite(factor) and factor != 0:
                gen.scale_(float(factor))
    with torch.no_grad():
        init_err = float(objective().sqrt())
    params = [p for p in gen.parameters() if p.numel()]
    best = float("inf")
    best_state = [p.detach().clone() for p in params]

    @torch.no_grad()
    def restore_best() -> None:
        for b, p in zip(best_state, params):
            p.copy_(b)

    def keep_if_best(value: float) -> None:
        nonlocal best
        if value < best:
            best = value
            for b, p in zip(best_state, params):
                b.copy_(p.detach())

    scale = 1.0  # lr multiplier, cut by divergences
    opt = torch.optim.Adam(params, lr=lr)

    def lr_at(t: int) -> float:
        if schedule == "cosine":
            return lr * scale * 0.5 * (1 + math.cos(math.pi * t / max(max_steps, 1)))
        return lr * scale

    since, decays, step, adam_steps, restarts = 0, 0, 0, 0, 0
    # a bar only on a terminal (tqdm's disable=None): piped logs and workers stay clean
    bar = tqdm(total=max_steps, desc=f"ADTN pre-fit Q={gen.q} M={gen.depth}", unit="step", leave=False,
               disable=None if progress else True)
    while step < max_steps and params:
        if step % 25 == 0:  # a few updates: the loop itself is microseconds per step on small layers
            bar.n = step
            bar.set_postfix(rel_err=f"{math.sqrt(best):.4f}" if math.isfinite(best) else "-", refresh=True)
        out = generated()
        loss = (out - w).pow(2).sum() / w_norm2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        dead = value >= 1.0 - 1e-6 and not bool(out.detach().any())
        if not math.isfinite(value) or value > 2 * best + 1e-8 or dead:  # (+1e-8: noise at an exact fit is no divergence)
            # diverged, or worse than a zero output (a dead ReLU state): back to the best gates
            if schedule == "plateau" and decays >= max_decays:
                break
            restore_best()
            scale *= lr_decay
            opt = torch.optim.Adam(params, lr=lr_at(step))
            decays, since, step, restarts = decays + 1, 0, step + 1, restarts + 1
            continue
        if value < best * (1 - min_delta):
            since = 0
        else:
            since += 1
        keep_if_best(value)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.step()
        step, adam_steps = step + 1, adam_steps + 1
        if schedule == "plateau" and since >= patience:
            if decays >= max_decays:
                break
            decays, since = decays + 1, 0
            scale *= lr_decay
    bar.close()
    if params:
        with torch.no_grad():  # the iterate after the last step was never evaluated
            last = float(objective())
        if math.isfinite(last):
            keep_if_best(last)
    restore_best()
    with torch.no_grad():
        final = float(objective().sqrt())
    evals = [0]
    if polish > 0 and params:
        lbfgs = torch.optim.LBFGS(params, lr=1, max_iter=polish, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-12, tolerance_change=1e-15, history_size=20)

        def closure() -> torch.Tensor:
            evals[0] += 1
            lbfgs.zero_grad(set_to_none=True)
            value = objective()
            value.backward()
            return value

        lbfgs.step(closure)
        with torch.no_grad():
            polished = float(objective().sqrt())
        if math.isfinite(polished) and polished < final:
            final = polished
        else:
            restore_best()
    return {"rel_error": final, "steps": step, "adam_steps": adam_steps, "restarts": restarts,
            "polish_evals": evals[0], "seconds": time.perf_counter() - t0, "init_rel_error": init_err}
