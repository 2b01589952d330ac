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

Fitting a generator to a weight (``prefit``, ``sgd_gain``): ``methods.adtn.prefit``. Which entries
are the weight: ``methods.adtn.layout``. Initialisation and scale (``reset_parameters``, ``scale_``,
``init_rank1_``): ``methods.adtn.start``.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from methods.adtn.start import HOMOGENEOUS, GeneratorStart  # noqa: F401 - HOMOGENEOUS stays importable here

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "gelu", "sigmoid", "identity")
#: checkpoint per brick layer by default from this Q on (state of 2^20 entries and more), depth >= 2
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


def _relu_in_place(x: torch.Tensor) -> torch.Tensor:
    return x.relu_()  # x is always a fresh intermediate; relu saves its output


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _activation(name: str, negative_slope: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation between layers: module-level functions rather than lambdas, so a
    generator (and a model holding one) pickles."""
    if name == "relu":
        return _relu_in_place
    if name == "leaky_relu":
        return functools.partial(F.leaky_relu, negative_slope=negative_slope)
    if name == "tanh":
        return torch.tanh
    if name == "gelu":
        return F.gelu
    if name == "sigmoid":
        return torch.sigmoid
    if name == "identity":
        return _identity
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


class ADTNGenerator(GeneratorStart, nn.Module):
    """Generates ``numel`` weights (first entries of a d^Q tensor) from M*(Q-1) gates.

    ``impl``: 'fused' (default) or 'loop'; ``fuse``: gates per fused GEMM; ``checkpoint``:
    True / False / None (auto: on from Q = 20 and depth 2 when gradients are needed).
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
        if self.checkpoint is not None:
            return bool(self.checkpoint)
        # one brick layer: recomputing it in backward saves no memory (its passes are all alive
        # at once either way) and costs a forward (Q = 24: 1.29 s vs 1.07 s forward + backward)
        return self.depth > 1 and self.q >= CHECKPOINT_FROM_Q

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
