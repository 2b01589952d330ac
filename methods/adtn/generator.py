"""The ADTN weight generator (Qing, Li, Zhou, Ran, arXiv 2305.06058): a deep tensor network
of two-site gates with activations between brick-wall layers, contracted into a weight
tensor with ``N <= d**Q`` entries from ``O(M * Q)`` parameters. Pure torch.

Layout (the project's ADTN design note): Q sites of dimension d, start state v^{(x)Q} with
v = e_0; M brick-wall layers, each first the gates on bonds (0,1), (2,3), ... then on
(1,2), (3,4), ...; an activation between layers, none after the last. Site 0 is the most
significant digit of the flat index. Which of the d^Q entries are the weight is the layer's
layout (``methods.adtn.layout``: row-major = the first N; padded = a cropped block view);
``forward`` returns the first N.

Parameters:

* ``first_even`` (Q//2, d^2): the first layer's even-bond gates act on e_0 (x) e_0, so only
  their first column matters; the first layer's even sublayer is the product state of these
  vectors (times e_0 on the last site when Q is odd);
* ``first_odd`` (Q-1-Q//2, d^2, d^2): the first layer's odd-bond gates;
* ``gates`` ((M-1)*(Q-1), d^2, d^2): layers 2..M, row ``(layer-2)*(Q-1) + bond`` (3-D, so a
  ``model.to(memory_format=torch.channels_last)`` leaves it alone).

A gate ``G`` maps the pair amplitude ``x[b]`` (b = s_i * d + s_{i+1}) to ``sum_b G[a, b] x[b]``.

Two contractions give the same tensor (up to float rounding):

* ``loop``: gate by gate, the state viewed as (d^i, d^2, d^(Q-i-2)) and multiplied by the
  gate in one broadcast ``matmul`` (the plain reference);
* ``fused``: the gates of one sublayer are grouped ``fuse`` at a time into one Kronecker
  operator K on consecutive sites (lone boundary sites join a neighbour as an identity
  factor), and each group is one GEMM that reads and writes the state once:
  ``state = state.view(D, rest).T @ K.T``. That contracts the leading mode and moves it to
  the end, so after all groups of a sublayer the modes are back in order: no permute copies
  and ``ceil(gates / fuse)`` passes per sublayer instead of one per gate.

Activation checkpointing per brick layer (``torch.utils.checkpoint``, non-reentrant) keeps
only M states alive for backward instead of one per pass. Without autograd the fused GEMMs
write into two preallocated buffers in turn.

Fitting: ``prefit`` (Adam on ||T - W||^2 / ||W||^2 over the real entries of a layout, on a
fixed cosine schedule or until a plateau, then optional L-BFGS) starts from the current gates
times the least-squares factor (``start='lsq'``) or from ``init_rank1_``: the weight's best
Kronecker-rank-1 approximation over the site pairs, which the first layer represents exactly
(signs carried by the last layer through the ReLUs). ``sgd_gain`` measures
how much faster than a dense weight the generated weight moves under SGD; the buffer
``grad_scale`` can compensate. Which entries are the weight: ``methods.adtn.layout``.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from methods.adtn.layout import Layout

#: activations whose positive homogeneity (f(cx) = c f(x), c > 0) lets a scale be spread over all gates
HOMOGENEOUS = ("relu", "leaky_relu", "identity")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "gelu", "sigmoid", "identity")
#: checkpoint per brick layer by default from this Q on (state of 2^20 entries and more)
CHECKPOINT_FROM_Q = 20


def num_sites(numel: int, local_dim: int = 2) -> int:
    """Q = ceil(log_d numel), at least 2 (a single site has no bond to carry a gate)."""
    if numel < 1 or local_dim < 2:
        raise ValueError(f"need numel >= 1 and local_dim >= 2, got {numel}, {local_dim}")
    q, size = 0, 1
    while size < numel:
        q, size = q + 1, size * local_dim
    return max(q, 2)


def param_count(q: int, depth: int, local_dim: int = 2) -> int:
    """Exact parameter count: d^2 per first-layer even gate, d^4 per other gate.

    For d = 2: 4*floor(Q/2) + 16*(Q-1-floor(Q/2)) + 16*(Q-1)*(M-1)."""
    d2, d4 = local_dim ** 2, local_dim ** 4
    return d2 * (q // 2) + d4 * (q - 1 - q // 2) + d4 * (q - 1) * (depth - 1)


def _units(q: int, parity: int) -> list[tuple[str, int]]:
    """The sublayer of bonds of the given parity as site-ordered units: ('gate', bond) or ('site', i)."""
    units, s = [], 0
    if parity == 1:
        units.append(("site", 0))
        s = 1
    while s < q:
        if s + 1 < q:
            units.append(("gate", s))
            s += 2
        else:
            units.append(("site", s))
            s += 1
    return units


def sublayer_plan(q: int, parity: int, fuse: int) -> list[list[tuple[str, int]]]:
    """Groups of at most ``fuse`` consecutive gates (plus lone sites) covering all Q sites in
    order; empty when the sublayer has no gate."""
    units = _units(q, parity)
    if not any(kind == "gate" for kind, _ in units):
        return []
    chunks: list[list[tuple[str, int]]] = []
    cur: list[tuple[str, int]] = []
    gates = 0
    for u in units:
        if u[0] == "gate" and gates == fuse:
            chunks.append(cur)
            cur, gates = [], 0
        cur.append(u)
        gates += u[0] == "gate"
    if gates == 0:  # a trailing lone site joins the previous group
        chunks[-1].extend(cur)
    else:
        chunks.append(cur)
    return chunks


def _activation(name: str, negative_slope: float) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "relu":
        return lambda x: x.relu_()  # x is always a fresh intermediate; relu saves its output
    if name == "leaky_relu":
        return lambda x: F.leaky_relu(x, negative_slope)
    if name == "tanh":
        return torch.tanh
    if name == "gelu":
        return F.gelu
    if name == "sigmoid":
        return torch.sigmoid
    if name == "identity":
        return lambda x: x
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")


def _no_autocast(device: torch.device):
    """Generation runs in the parameters' dtype: M*(Q-1) chained products lose too much in bf16."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know
        return contextlib.nullcontext()


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class ADTNGenerator(nn.Module):
    """Generates ``numel`` weights (first entries of a d^Q tensor) from M*(Q-1) gates.

    ``impl``: 'fused' (default) or 'loop'; ``fuse``: gates per fused GEMM; ``checkpoint``:
    True / False / None (auto: on from Q = 20 when gradients are needed).
    ``init``: 'identity' (uniform product state, identity gates + ``init_noise`` Gaussian noise;
    output norm ~ sqrt(numel / d^Q) at any Q and M) or 'orthogonal' (random unit vectors and
    random orthogonal gates). No scale parameter: ``scale_`` folds a factor into the gates.
    The buffer ``grad_scale`` (default 1) multiplies the gates' gradients; see ``sgd_gain``.
    """

    def __init__(self, numel: int, depth: int, local_dim: int = 2, activation: str = "relu",
                 negative_slope: float = 0.01, init: str = "identity", init_noise: float = 0.05,
                 impl: str = "fused", fuse: int = 2, checkpoint: bool | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if depth < 1:
            raise ValueError(f"ADTN depth must be >= 1, got {depth}")
        if impl not in ("fused", "loop"):
            raise ValueError(f"impl must be 'fused' or 'loop', got {impl!r}")
        if fuse < 1:
            raise ValueError(f"fuse must be >= 1, got {fuse}")
        self.act_fn = _activation(activation, negative_slope)
        self.numel, self.depth, self.d = int(numel), int(depth), int(local_dim)
        self.q = num_sites(self.numel, self.d)
        self.activation, self.negative_slope = activation, negative_slope
        self.impl, self.fuse, self.checkpoint = impl, int(fuse), checkpoint
        q, d2 = self.q, self.d ** 2
        kw = {"device": device, "dtype": dtype}
        self.first_even = nn.Parameter(torch.empty(q // 2, d2, **kw))
        self.first_odd = nn.Parameter(torch.empty(q - 1 - q // 2, d2, d2, **kw))
        self.gates = nn.Parameter(torch.empty((self.depth - 1) * (q - 1), d2, d2, **kw))
        self._plans = {p: sublayer_plan(q, p, self.fuse) for p in (0, 1)}
        # multiplies the gates' gradients (forward unchanged); a buffer, so not a parameter
        self.register_buffer("grad_scale", torch.ones((), device=device, dtype=dtype))
        self.reset_parameters(init, init_noise)

    # --- initialisation and scale -------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, init: str = "identity", noise: float = 0.05) -> None:
        d, d2 = self.d, self.d ** 2
        if init == "identity":
            self.first_even.fill_(1.0 / d).add_(noise * torch.randn_like(self.first_even))
            eye = torch.eye(d2, dtype=self.gates.dtype, device=self.gates.device)
            for p in (self.first_odd, self.gates):
                p.copy_(eye.expand_as(p) + noise * torch.randn_like(p))
        elif init == "orthogonal":
            v = torch.randn_like(self.first_even)
            self.first_even.copy_(v / v.norm(dim=-1, keepdim=True))
            for p in (self.first_odd, self.gates):
                flat = p.view(-1, d2, d2)
                for i in range(flat.shape[0]):
                    qm, r = torch.linalg.qr(torch.randn(d2, d2, dtype=torch.float64))
                    flat[i].copy_(qm * torch.sign(torch.diagonal(r)))
        else:
            raise ValueError(f"unknown init {init!r}; valid: identity, orthogonal")

    @torch.no_grad()
    def scale_(self, factor: float) -> None:
        """Multiply the output by ``factor``, folded into the gates (no extra parameter).

        Homogeneous activations: |factor|^(1/(M(Q-1))) on every gate; otherwise spread over the
        last brick layer, on which the output is multilinear. A negative sign flips one
        last-layer gate."""
        if factor == 0 or not math.isfinite(factor):
            raise ValueError(f"cannot fold scale {factor}")
        mag = abs(factor)
        if self.activation in HOMOGENEOUS:
            f = mag ** (1.0 / (self.depth * (self.q - 1)))
            for p in self.parameters():
                p.mul_(f)
        else:
            f = mag ** (1.0 / (self.q - 1))
            last = self.gates[(self.depth - 2) * (self.q - 1):]
            for p in ((self.first_even, self.first_odd) if self.depth == 1 else (last,)):
                p.mul_(f)
        if factor < 0:  # the last brick layer is linear: flipping one of its gates flips the output
            (self.first_even[0] if self.depth == 1 else self.gates[(self.depth - 2) * (self.q - 1)]).neg_()

    @torch.no_grad()
    def init_rank1_(self, target: torch.Tensor, sweeps: int = 8, noise: float = 0.01) -> float:
        """Start from the best Kronecker-rank-1 approximation of ``target`` (zero-padded to d^Q;
        a target of d^Q entries, e.g. ``Layout.embed`` of a weight, is used as it is).

        Modes: the Q//2 site pairs (the first layer's even gates), plus the last site when Q is
        odd (put in by the first layer's last odd gate, I (x) B with B e_0 = b). Found by
        higher-order power iteration. Through ReLUs the first layer holds |factors| and the last
        layer's gates hold their signs as diagonals (even bonds: pairs; last odd bond: b); other
        gates are identity + ``noise``. Exact through homogeneous activations only (else the
        plain identity init is used). Returns the rank-1 relative error of the padded target."""
        d, d2, q = self.d, self.d ** 2, self.q
        flat = target.detach().reshape(-1).double()
        if flat.numel() == d ** q:  # already laid out in the d^Q tensor (padding zeros included)
            full = flat.clone()
        else:
            full = torch.zeros(d ** q, dtype=torch.float64, device=target.device)
            full[: self.numel] = flat
        dims = [d2] * (q // 2) + ([d] if q % 2 else [])
        factors = _hopm(full, dims, sweeps)
        lam = float(_contract_except(full, factors, 0) @ factors[0])
        dev, dt = self.first_even.device, self.first_even.dtype
        factors = [f.to(device=dev, dtype=dt) for f in factors]
        if lam < 0:
            factors[0] = -factors[0]
            lam = -lam
        relu_like = self.depth > 1 and self.activation in ("relu", "leaky_relu")
        if self.depth > 1 and not relu_like and self.activation != "identity":
            self.reset_parameters("identity", noise)
            return float("nan")
        eye = torch.eye(d2, dtype=dt, device=dev)
        for p in (self.first_odd, self.gates):
            p.copy_(eye.expand_as(p) + noise * torch.randn_like(p))
        pairs = factors[: q // 2]
        self.first_even.copy_(torch.stack([f.abs() if relu_like else f for f in pairs]))
        eye_d = torch.eye(d, dtype=dt, device=dev)
        if q % 2:
            b = factors[-1]
            mat = eye_d.clone()
            mat[:, 0] = b.abs() if relu_like else b
            self.first_odd[-1].copy_(torch.kron(eye_d, mat))
        if relu_like:
            last = (self.depth - 2) * (q - 1)
            for k, f in enumerate(pairs):
                self.gates[last + 2 * k].copy_(torch.diag(torch.where(f < 0, -1.0, 1.0).to(dt)))
            if q % 2:
                sign_b = torch.where(factors[-1] < 0, -1.0, 1.0).to(dt)
                self.gates[last + q - 2].copy_(torch.kron(eye_d, torch.diag(sign_b)))
        self.scale_(lam)
        return float(max(full.pow(2).sum() - lam ** 2, 0.0) ** 0.5 / full.norm())

    # --- contraction ---------------------------------------------------------------------------
    def _gate(self, layer: int, bond: int, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        _, first_odd, gates = tensors
        return first_odd[(bond - 1) // 2] if layer == 0 else gates[(layer - 1) * (self.q - 1) + bond]

    def _product_state(self, first_even: torch.Tensor) -> torch.Tensor:
        """The first layer's even sublayer applied to e_0^{(x)Q}: a Kronecker product of vectors."""
        s = torch.ones(1, dtype=first_even.dtype, device=first_even.device)
        for a in first_even:
            s = torch.outer(s, a).reshape(-1)
        if self.q % 2:
            e0 = torch.zeros(self.d, dtype=s.dtype, device=s.device)
            e0[0] = 1
            s = torch.outer(s, e0).reshape(-1)
        return s

    def _sublayer(self, state: torch.Tensor, layer: int, parity: int, impl: str, tensors: tuple[torch.Tensor, ...],
                  spare: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One sublayer; with a ``spare`` buffer (no autograd) the GEMMs write into it and the
        two buffers swap, so no pass allocates (large CPU allocations page-fault every time)."""
        d, q = self.d, self.q
        if impl == "loop":
            for bond in range(parity, q - 1, 2):
                view = state.view(d ** bond, d * d, d ** (q - bond - 2))
                state = torch.matmul(self._gate(layer, bond, tensors), view).reshape(-1)
            return state, spare
        eye = None
        for chunk in self._plans[parity]:
            op = None
            for kind, idx in chunk:
                if kind == "gate":
                    f = self._gate(layer, idx, tensors)
                else:
                    if eye is None:
                        eye = torch.eye(d, dtype=state.dtype, device=state.device)
                    f = eye
                op = f if op is None else torch.kron(op, f)
            lhs = state.view(op.shape[0], -1).t()
            if spare is None:
                state = torch.mm(lhs, op.t()).view(-1)
            else:
                out = spare.view(lhs.shape[0], op.shape[0])
                torch.mm(lhs, op.t(), out=out)
                state, spare = out.view(-1), state
        return state, spare

    def _brick(self, state: torch.Tensor | None, layer: int, impl: str, tensors: tuple[torch.Tensor, ...],
               spare: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if layer == 0:
            state = self._product_state(tensors[0])
        else:
            state, spare = self._sublayer(state, layer, 0, impl, tensors, spare)
        state, spare = self._sublayer(state, layer, 1, impl, tensors, spare)
        if layer < self.depth - 1:
            state = self.act_fn(state)
        return state, spare

    def _brick_ckpt(self, state: torch.Tensor | None, layer: int, impl: str, *tensors: torch.Tensor) -> torch.Tensor:
        return self._brick(state, layer, impl, tensors)[0]

    def needs_grad(self) -> bool:
        """Whether a generation now would be differentiated (grad mode on, trainable gates)."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def use_checkpoint(self) -> bool:
        if not self.needs_grad():
            return False
        return self.q >= CHECKPOINT_FROM_Q if self.checkpoint is None else bool(self.checkpoint)

    def full(self, impl: str | None = None, checkpoint: bool | None = None) -> torch.Tensor:
        """The whole d^Q output as a flat vector."""
        impl = impl or self.impl
        ckpt = self.use_checkpoint() if checkpoint is None else checkpoint
        needs_grad = self.needs_grad()
        tensors = (self.first_even, self.first_odd, self.gates)
        if needs_grad:
            tensors = tuple(_ScaleGrad.apply(t, self.grad_scale) for t in tensors)
        with _no_autocast(self.first_even.device):
            state, spare = None, None
            if not needs_grad and impl == "fused":
                p = self.first_even
                spare = torch.empty(self.d ** self.q, dtype=p.dtype, device=p.device)
            for layer in range(self.depth):
                if ckpt:
                    state = _checkpoint(self._brick_ckpt, state, layer, impl, *tensors, use_reentrant=False)
                else:
                    state, spare = self._brick(state, layer, impl, tensors, spare)
        return state

    def forward(self, impl: str | None = None, checkpoint: bool | None = None) -> torch.Tensor:
        """The first ``numel`` outputs (flat)."""
        return self.full(impl, checkpoint)[: self.numel]

    def passes(self, impl: str | None = None) -> int:
        """Passes over the full state per generation (GEMMs and activations), for bandwidth figures."""
        impl = impl or self.impl
        if impl == "loop":
            per = [self.q - 1] * self.depth
            per[0] -= self.q // 2
        else:
            per = [len(self._plans[0]) + len(self._plans[1])] * self.depth
            per[0] -= len(self._plans[0])
        return sum(per) + (self.depth - 1) + 1  # activations, and building the product state

    def extra_repr(self) -> str:
        return (f"numel={self.numel}, Q={self.q}, depth={self.depth}, d={self.d}, "
                f"activation={self.activation}, impl={self.impl}, fuse={self.fuse}")


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


def _contract_except(full: torch.Tensor, factors: list[torch.Tensor], k: int) -> torch.Tensor:
    """Contract the tensor (modes ``len(f)`` for f in factors) with every factor but the k-th."""
    x = full
    for j in range(len(factors) - 1, k, -1):
        x = x.view(-1, factors[j].numel()) @ factors[j]
    for j in range(k):
        x = factors[j] @ x.view(factors[j].numel(), -1)
    return x.reshape(-1)


def _hopm(full: torch.Tensor, dims: list[int], sweeps: int) -> list[torch.Tensor]:
    """Unit factors of the best rank-1 approximation (higher-order power method, HOSVD start)."""
    factors = []
    for j, n in enumerate(dims):  # leading left singular vector of each mode's unfolding
        before = math.prod(dims[:j])
        unf = full.view(before, n, -1)
        gram = torch.einsum("aib,ajb->ij", unf, unf)
        factors.append(torch.linalg.eigh(gram)[1][:, -1].contiguous())
    for _ in range(sweeps):
        for k in range(len(dims)):
            v = _contract_except(full, factors, k)
            norm = v.norm()
            if norm > 0:
                factors[k] = v / norm
    return factors


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
