"""``nnbcd-tt`` and ``nnbcd-prune``: gradient-free block coordinate descent (NN-BCD).

Li, Chung, Du, Wang, Zhou, Shen, "On Model Compression for Neural Networks: Framework,
Algorithm, and Convergence Guarantee", arXiv 2303.06815. The paper's full text was not
available to us; the splitting below follows the three-splitting BCD of Zeng et al. (ICML
2019) that NN-BCD extends, with the compression term of the authors' released code, and is
what we implement (so the numbers are ours, not the paper's).

**Where it applies.** A ReLU MLP at the end of the network: the trailing run of Linear layers
(registration order) with matching sizes, every target layer in it, ReLU between them and
the last one giving the output (checked numerically on a batch before training). FC-2 is
such a network; for LeNet-5 / DigitNet the fc head qualifies and the conv part stays frozen,
its output on the training subset being the head's input X. Conv targets are skipped.

**Objective.** Head layers l = 1..L, samples as rows, V_0 = X (N x d_0), Y one-hot:

    Phi = 1/N [ 1/2 ||V_L - Y||^2 + gamma/2 sum_{l<L} ||V_l - relu(U_l)||^2
                + gamma/2 ||V_L - U_L||^2 + rho/2 sum_l ||U_l - V_{l-1} W_l^T - 1 b_l^T||^2 ]
          + tau/2 sum_{l in targets} ||W_l - G_l||^2,        G_l in C_l,

C_l = matrices of TT rank <= r in the layer's TT format (``nnbcd-tt``) or with at most k
non-zeros (``nnbcd-prune``). Biases are kept and trained (the authors' notebooks zero them).

**Updates** (one iteration = one backward sweep l = L..1; every block is the exact minimiser
of Phi plus alpha/2 ||block - previous||^2, so Phi never increases):
V_L = (Y + gamma U_L + alpha V_L')/(1 + gamma + alpha);
U_L = (gamma V_L + rho A_L + alpha U_L')/(gamma + rho + alpha), A_l = V_{l-1} W_l^T + b_l;
[W_l b_l] = ridge regression of U_l on [V_{l-1} 1] with the proximal pulls alpha (to the
previous value) and tau (W_l to G_l): one (d+1)x(d+1) linear solve;
G_l = projection of W_l on C_l (magnitude top-k, exact; TT-SVD through
``tensorly.decomposition.tensor_train``, kept only if it is closer to W_l than the previous
G_l, since TT-SVD is quasi-optimal, so Phi stays monotone);
V_{l-1} = (rho W_l^T W_l + (gamma+alpha) I)^-1 applied to rho W_l^T (U_l - b_l) + gamma relu(U_{l-1}) + alpha V';
U_{l-1} = elementwise closed-form proximal step of ReLU (the better of the u >= 0 and
u <= 0 stationary points).

**Result.** The final network uses G_l (the compressed weights) and b_l for the targets and
W_l, b_l for other head layers. ``select="val"`` (default) keeps the iterate whose
compressed network has the best validation accuracy (the suite's fine-tuning also selects on
validation); ``"last"`` keeps the last. Full-batch variables limit it to ``subset`` training
samples; ``ctx.extras`` gets the objective per iteration, accuracies, subset and timing.
This replaces the gradient fine-tuning (``ctx.epochs`` is not used).

**Defaults.** gamma = rho = tau = 10, alpha = 1e-4, 60 iterations on 10000 samples (about a
minute for FC-2 on 2 CPU cores). Chosen on FC-2/MNIST (TT, ratio 16, 3000 samples): with
gamma = rho = 1 the squared loss dominates, the auxiliary variables drift from the network
they stand for and its accuracy falls while Phi still decreases; tau much above or below
rho slows the recovery of the compressed network. ``init="compressed"`` starts W from the
compressed weights instead of the trained dense ones (slower in our trials).

**TT format.** W (out x in) with out = o_1...o_d, in = i_1...i_d (balanced factors, d =
``order``) is the order-d tensor with modes o_t*i_t (interleaved, as in TT layers); the
module stores the cores and forms W from them.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.compressor import (BudgetUnreachable, CompressionError, Compressor, FactorizedLayer, FinetuneContext,
                              dense_params, effective_weight, get_layer)
from bench.registry import register_method
from methods._tensorize import bias_params, with_torch_backend
from methods.prune import PrunedLayer, pruned_params, top_k_mask


# --- TT format ------------------------------------------------------------------------------
def balanced_factors(n: int, d: int) -> list[int]:
    """n as a product of d integer factors as equal as possible (ascending; 1s if n lacks them)."""
    if n < 1 or d < 1:
        raise ValueError(f"need n >= 1 and d >= 1, got n={n}, d={d}")
    out, rem = [], n
    for left in range(d, 0, -1):
        if left == 1:
            out.append(rem)
            break
        target = rem ** (1.0 / left)
        divs = [f for f in range(1, rem + 1) if rem % f == 0]
        f = min(divs, key=lambda f: (abs(math.log(f) - math.log(target)), f))
        out.append(f)
        rem //= f
    return sorted(out)


def tt_ranks(modes: list[int], rank: int) -> list[int]:
    """Bond dimensions of a rank-``rank`` TT of a tensor with these modes (clipped at the
    unfolding sizes, as TT-SVD clips them)."""
    ranks = [1]
    for t in range(1, len(modes)):
        ranks.append(min(rank, math.prod(modes[:t]), math.prod(modes[t:])))
    return ranks + [1]


def tt_core_params(modes: list[int], rank: int) -> int:
    r = tt_ranks(modes, rank)
    return sum(r[t] * m * r[t + 1] for t, m in enumerate(modes))


def matrix_to_tensor(w: torch.Tensor, o: list[int], i: list[int]) -> torch.Tensor:
    """(out, in) -> modes (o_1 i_1, ..., o_d i_d)."""
    d = len(o)
    t = w.reshape(*o, *i)
    perm = [x for pair in zip(range(d), range(d, 2 * d)) for x in pair]
    return t.permute(*perm).reshape([a * b for a, b in zip(o, i)])


def tensor_to_matrix(t: torch.Tensor, o: list[int], i: list[int]) -> torch.Tensor:
    d = len(o)
    t = t.reshape([x for pair in zip(o, i) for x in pair])
    perm = list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2))
    return t.permute(*perm).reshape(math.prod(o), math.prod(i))


def contract_cores(cores: list[torch.Tensor]) -> torch.Tensor:
    """Full tensor of a TT given cores (r_{t-1}, n_t, r_t)."""
    out = cores[0]
    for c in cores[1:]:
        out = torch.tensordot(out, c, dims=([out.dim() - 1], [0]))
    return out.reshape([c.shape[1] for c in cores])


def tt_svd(w: torch.Tensor, o: list[int], i: list[int], rank: int) -> list[torch.Tensor]:
    """TT-SVD cores of the (out, in) matrix ``w`` at TT rank ``rank`` (float64, w's device)."""
    from tensorly.decomposition import tensor_train

    t = matrix_to_tensor(w.detach().double(), o, i).contiguous()
    factors = with_torch_backend(tensor_train, t, rank=int(rank)).factors  # stays on w's device
    return [f.contiguous() for f in factors]


class TTLinear(FactorizedLayer):
    """A Linear layer whose weight is formed from stored TT cores on each forward."""

    def __init__(self, cores: list[torch.Tensor], o: list[int], i: list[int], rank: int,
                 bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_factors, self.in_factors, self.rank = list(o), list(i), int(rank)
        self.cores = nn.ParameterList([nn.Parameter(c.to(dtype).clone()) for c in cores])
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.tnbench_info = {"tt_ranks": [1] + [c.shape[2] for c in cores], "modes":
                             [a * b for a, b in zip(o, i)], "out_factors": list(o), "in_factors": list(i)}

    def set_cores(self, cores: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, c in zip(self.cores, cores):
                p.copy_(c)

    def effective_weight(self) -> torch.Tensor:
        return tensor_to_matrix(contract_cores(list(self.cores)), self.out_factors, self.in_factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


# --- the BCD solver ---------------------------------------------------------------------------
def relu_prox(v: torch.Tensor, a: torch.Tensor, gamma: float, beta: float) -> torch.Tensor:
    """argmin_u gamma/2 (v - relu(u))^2 + beta/2 (u - a)^2, elementwise."""
    up = torch.clamp((gamma * v + beta * a) / (gamma + beta), min=0)
    un = torch.clamp(a, max=0)
    fp = gamma / 2 * (v - up) ** 2 + beta / 2 * (up - a) ** 2
    fn = gamma / 2 * v ** 2 + beta / 2 * (un - a) ** 2
    return torch.where(fp <= fn, up, un)


class BCDProblem:
    """State and updates of NN-BCD on a ReLU MLP head (float64, samples as rows).

    ``project[l]`` maps a weight to its compressed copy (None: layer not compressed);
    ``fit[l]`` (optional) returns (G, extra) so TT cores can be kept alongside G.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, weights: list[torch.Tensor],
                 biases: list[torch.Tensor], compressed: list[torch.Tensor | None], project: list,
                 gamma: float, rho: float, alpha: float, tau: float):
        self.x, self.y = x, y
        self.n = x.shape[0]
        self.w = [w.clone() for w in weights]
        self.b = [b.clone() for b in biases]
        self.g = [None if g is None else g.clone() for g in compressed]
        self.project = project
        self.gamma, self.rho, self.alpha, self.tau = gamma, rho, alpha, tau
        self.rejected = 0
        self.u, self.v = [], []
        h = x
        for l, (w, b) in enumerate(zip(self.w, self.b)):
            u = h @ w.T + b
            h = torch.relu(u) if l < len(self.w) - 1 else u
            self.u.append(u)
            self.v.append(h.clone())
        eye = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        self.x1 = torch.cat([x, eye], dim=1)
        self.gram_x = self.x1.T @ self.x1  # the first layer's input never changes

    def _inputs(self, l: int) -> torch.Tensor:
        return self.x if l == 0 else self.v[l - 1]

    def objective(self) -> float:
        L, n = len(self.w), self.n
        fit = 0.5 * (self.v[-1] - self.y).pow(2).sum()
        for l in range(L):
            act = torch.relu(self.u[l]) if l < L - 1 else self.u[l]
            fit = fit + self.gamma / 2 * (self.v[l] - act).pow(2).sum()
            lin = self._inputs(l) @ self.w[l].T + self.b[l]
            fit = fit + self.rho / 2 * (self.u[l] - lin).pow(2).sum()
        out = fit / n
        for l in range(L):
            if self.g[l] is not None:
                out = out + self.tau / 2 * (self.w[l] - self.g[l]).pow(2).sum()
        return float(out)

    def _update_wb(self, l: int) -> None:
        n, a, rho = self.n, self.alpha, self.rho
        if l == 0:
            inp1, gram = self.x1, self.gram_x
        else:
            inp1 = torch.cat([self.v[l - 1], torch.ones_like(self.v[l - 1][:, :1])], dim=1)
            gram = inp1.T @ inp1
        d1 = gram.shape[0]
        theta = torch.cat([self.w[l], self.b[l][:, None]], dim=1)
        m = rho / n * gram + a * torch.eye(d1, dtype=gram.dtype, device=gram.device)
        rhs = rho / n * (self.u[l].T @ inp1) + a * theta
        if self.g[l] is not None:
            m[:-1, :-1] += self.tau * torch.eye(d1 - 1, dtype=gram.dtype, device=gram.device)
            rhs[:, :-1] += self.tau * self.g[l]
        theta = torch.linalg.solve(m, rhs.T).T  # m is symmetric
        self.w[l], self.b[l] = theta[:, :-1].contiguous(), theta[:, -1].contiguous()

    def _update_g(self, l: int) -> None:
        if self.g[l] is None:
            return
        new = self.project[l](self.w[l])
        if (self.w[l] - new).pow(2).sum() <= (self.w[l] - self.g[l]).pow(2).sum():
            self.g[l] = new
        else:  # a quasi-optimal projection (TT-SVD) that did worse: keep the previous copy
            self.rejected += 1

    def sweep(self) -> None:
        L, g, r, a = len(self.w), self.gamma, self.rho, self.alpha
        # output layer
        self.v[-1] = (self.y + g * self.u[-1] + a * self.v[-1]) / (1 + g + a)
        lin = self._inputs(L - 1) @ self.w[-1].T + self.b[-1]
        self.u[-1] = (g * self.v[-1] + r * lin + a * self.u[-1]) / (g + r + a)
        self._update_wb(L - 1)
        self._update_g(L - 1)
        for l in range(L - 2, -1, -1):
            w_next, b_next = self.w[l + 1], self.b[l + 1]
            eye = torch.eye(w_next.shape[1], dtype=w_next.dtype, device=w_next.device)
            m = r * w_next.T @ w_next + (g + a) * eye
            rhs = r * (self.u[l + 1] - b_next) @ w_next + g * torch.relu(self.u[l]) + a * self.v[l]
            self.v[l] = torch.linalg.solve(m, rhs.T).T
            lin = self._inputs(l) @ self.w[l].T + self.b[l]
            self.u[l] = relu_prox(self.v[l], (r * lin + a * self.u[l]) / (r + a), g, r + a)
            self._update_wb(l)
            self._update_g(l)

    def final_weights(self) -> list[torch.Tensor]:
        """The weights of the network BCD delivers: compressed copies where there are any."""
        return [w if g is None else g for w, g in zip(self.w, self.g)]


def head_forward(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> torch.Tensor:
    h = x
    for l, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w.T + b
        if l < len(weights) - 1:
            h = torch.relu(h)
    return h


# --- applicability ----------------------------------------------------------------------------
def _is_replacement(m: nn.Module) -> bool:
    return isinstance(m, (TTLinear, PrunedLayer))


def mlp_head(model: nn.Module) -> list[str]:
    """Names of the trailing run of Linear layers (registration order; our replacements count
    as Linear) whose sizes chain: the candidate ReLU MLP head."""
    layers, skip_prefix = [], None
    for name, m in model.named_modules():
        if skip_prefix is not None and name.startswith(skip_prefix):
            continue
        if _is_replacement(m):
            layers.append((name, "linear", m))
            skip_prefix = name + "."
        elif isinstance(m, nn.Linear):
            layers.append((name, "linear", m))
        elif isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d)) or hasattr(m, "effective_weight"):
            layers.append((name, "other", m))
    head: list[str] = []
    prev_in = None
    for name, kind, m in reversed(layers):
        if kind != "linear":
            break
        w = effective_weight(m)
        if w.dim() != 2 or (prev_in is not None and w.shape[0] != prev_in):
            break
        head.insert(0, name)
        prev_in = w.shape[1]
    return head


def mlp_skip_reason(model: nn.Module, layer_names: list[str]) -> str | None:
    for name in layer_names:
        layer = get_layer(model, name)
        if not (isinstance(layer, nn.Linear) or _is_replacement(layer)):
            return (f"NN-BCD trains ReLU MLPs (fully connected layers) without gradients; "
                    f"target {name} is a {type(layer).__name__}")
    head = mlp_head(model)
    outside = [n for n in layer_names if n not in head]
    if outside:
        return (f"NN-BCD needs the target layers inside the network's trailing fully connected "
                f"head ({', '.join(head) or 'none'}); {', '.join(outside)} is not")
    return None


def _capture_head_input(model: nn.Module, first: nn.Module, x: torch.Tensor, batch: int = 2048):
    """Inputs of the head's first layer and the model outputs, batch by batch (eval, no grad)."""
    feats, outs = [], []
    store = {}
    handle = first.register_forward_pre_hook(lambda mod, args: store.__setitem__("x", args[0]))
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch):
                outs.append(model(x[s:s + batch]))
                feats.append(store["x"].flatten(1))
    finally:
        handle.remove()
    return torch.cat(feats), torch.cat(outs)


# --- the methods ------------------------------------------------------------------------------
class _NNBCD(Compressor):
    """Shared NN-BCD machinery; subclasses define the compressed layer and its projection."""

    def __init__(self, subset: int = 10000, iterations: int = 60, gamma: float = 10.0,
                 rho: float = 10.0, alpha: float = 1e-4, tau: float = 10.0, select: str = "val",
                 init: str = "dense", seed: int = 0, **options: Any):
        super().__init__(**options)
        if init not in ("dense", "compressed"):
            raise ValueError(f"init must be 'dense' or 'compressed', got {init!r}")
        self.init = init
        if select not in ("val", "last"):
            raise ValueError(f"select must be 'val' or 'last', got {select!r}")
        if int(subset) < 1 or int(iterations) < 0:
            raise ValueError(f"need subset >= 1 and iterations >= 0, got {subset}, {iterations}")
        self.subset, self.iterations, self.select, self.seed = int(subset), int(iterations), select, int(seed)
        self.gamma, self.rho, self.alpha, self.tau = float(gamma), float(rho), float(alpha), float(tau)

    def _check(self, layer: nn.Module) -> None:
        if not isinstance(layer, nn.Linear):
            raise CompressionError(f"{self.name} compresses Linear layers of a ReLU MLP, got "
                                   f"{type(layer).__name__}")

    def skip_reason(self, model: nn.Module, layer_names: list[str]) -> str | None:
        return mlp_skip_reason(model, layer_names)

    # subclass hooks: a projection for BCD, and writing the result back into the module
    def projector(self, module: nn.Module):
        raise NotImplementedError

    def write_back(self, module: nn.Module, g: torch.Tensor, bias: torch.Tensor) -> None:
        raise NotImplementedError

    def finetune(self, model: nn.Module, ctx: FinetuneContext) -> None:
        reason = mlp_skip_reason(model, ctx.layer_names)
        if reason:
            raise CompressionError(reason)
        start = time.perf_counter()
        head = mlp_head(model)
        mods = [get_layer(model, n) for n in head]
        data, dev = ctx.data, ctx.device
        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(data.x_train.shape[0], generator=gen)[: self.subset]
        x_tr = data.x_train[idx.to(data.x_train.device)].to(dev)
        y_tr = data.y_train[idx.to(data.y_train.device)].to(dev)
        feats, outs = _capture_head_input(model, mods[0], x_tr)
        # the head must reproduce the model's output (ReLU MLP at the end of the network)
        cur_w = [effective_weight(m).detach() for m in mods]
        cur_b = [m.bias.detach() if m.bias is not None else torch.zeros(m_w.shape[0], device=dev)
                 for m, m_w in zip(mods, cur_w)]
        probe = head_forward(feats[:256], cur_w, cur_b)
        # loose enough for TF32/cuBLAS differences, far tighter than any other activation
        if not torch.allclose(probe, outs[:256], rtol=1e-3, atol=1e-3 * float(outs[:256].abs().max()) + 1e-6):
            raise CompressionError(f"NN-BCD: layers {', '.join(head)} are not a ReLU MLP ending the "
                                   f"network (the head does not reproduce the model's output)")
        val_feats = _capture_head_input(model, mods[0], data.x_val.to(dev))[0] if len(data.x_val) else None
        y_val = data.y_val.to(dev)

        f64 = dict(dtype=torch.float64, device=dev)
        weights, biases, compressed, project = [], [], [], []
        for name, m, w, b in zip(head, mods, cur_w, cur_b):
            if name in ctx.layer_names:
                dense = ctx.dense_layers.get(name) if self.init == "dense" else None
                start_w = dense.weight.detach() if dense is not None else w
                start_b = dense.bias.detach() if dense is not None and dense.bias is not None else b
                weights.append(start_w.to(**f64))
                biases.append(start_b.to(**f64))
                compressed.append(w.to(**f64))
                project.append(self.projector(m))
            else:
                weights.append(w.to(**f64))
                biases.append(b.to(**f64))
                compressed.append(None)
                project.append(None)
        y1 = F.one_hot(y_tr.long(), data.num_classes).to(**f64)
        prob = BCDProblem(feats.to(**f64), y1, weights, biases, compressed, project,
                          self.gamma, self.rho, self.alpha, self.tau)

        def accuracy(x: torch.Tensor | None, y: torch.Tensor) -> float:
            if x is None or len(y) == 0:
                return float("nan")
            out = head_forward(x.to(torch.float64), prob.final_weights(), prob.b)
            return float((out.argmax(1) == y).double().mean())

        objective = [prob.objective()]
        train_acc = [accuracy(prob.x, y_tr)]
        val_acc = [accuracy(val_feats, y_val)]
        best = (val_acc[0], 0, [w.clone() for w in prob.final_weights()], [b.clone() for b in prob.b])
        for it in range(1, self.iterations + 1):
            prob.sweep()
            objective.append(prob.objective())
            train_acc.append(accuracy(prob.x, y_tr))
            val_acc.append(accuracy(val_feats, y_val))
            if self.select == "val" and not val_acc[-1] <= best[0]:  # NaN (no val split): last
                best = (val_acc[-1], it, [w.clone() for w in prob.final_weights()], [b.clone() for b in prob.b])
        if self.select == "last":
            best = (val_acc[-1], self.iterations, prob.final_weights(), prob.b)
        _, chosen_it, final_w, final_b = best
        with torch.no_grad():
            for name, m, w, b in zip(head, mods, final_w, final_b):
                if name in ctx.layer_names:
                    self.write_back(m, w, b)
                else:
                    m.weight.copy_(w.to(m.weight.dtype))
                    if m.bias is not None:
                        m.bias.copy_(b.to(m.bias.dtype))
        model.train(was_training)
        ctx.extras.update({
            "nnbcd_objective": objective, "nnbcd_train_acc": train_acc, "nnbcd_val_acc": val_acc,
            "nnbcd_subset": int(prob.n), "nnbcd_iterations": self.iterations,
            "nnbcd_selected_iteration": chosen_it, "nnbcd_head": head,
            "nnbcd_projection_rejected": prob.rejected,
            "nnbcd_hyper": {"gamma": self.gamma, "rho": self.rho, "alpha": self.alpha, "tau": self.tau},
            "nnbcd_seconds": time.perf_counter() - start,
        })


@register_method("nnbcd-tt")
class NNBCDTensorTrain(_NNBCD):
    """NN-BCD with a TT-rank constraint; knob = TT rank r (every bond clipped at r)."""

    knob_name = "tt rank"

    def __init__(self, order: int = 3, **options: Any):
        super().__init__(**options)
        if int(order) < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.order = int(order)

    def shape(self, layer: nn.Module) -> tuple[list[int], list[int], list[int]]:
        self._check(layer)
        o = balanced_factors(layer.out_features, self.order)
        i = balanced_factors(layer.in_features, self.order)
        return o, i, [a * b for a, b in zip(o, i)]

    def max_rank(self, layer: nn.Module) -> int:
        """The largest bond TT-SVD can use (a rank beyond it changes nothing)."""
        return max(tt_ranks(self.shape(layer)[2], 10 ** 12))

    def knobs(self, layer: nn.Module) -> list[int]:
        return list(range(1, self.max_rank(layer) + 1))

    def layer_params(self, layer: nn.Module, rank: int) -> int:
        _, _, modes = self.shape(layer)
        return tt_core_params(modes, int(rank)) + bias_params(layer)

    def factorize(self, layer: nn.Module, rank: int) -> nn.Module:
        o, i, modes = self.shape(layer)
        top = self.max_rank(layer)
        if not 1 <= int(rank) <= top:
            raise CompressionError(f"TT rank {rank} outside 1..{top} for {layer} (modes {modes})")
        cores = tt_svd(layer.weight, o, i, int(rank))
        return TTLinear(cores, o, i, int(rank), layer.bias, layer.weight.dtype)

    def projector(self, module: nn.Module):
        o, i, rank = module.out_factors, module.in_factors, module.rank
        return lambda w: tensor_to_matrix(contract_cores(tt_svd(w, o, i, rank)), o, i)

    def write_back(self, module: nn.Module, g: torch.Tensor, bias: torch.Tensor) -> None:
        # re-derive cores of g (it is exactly TT-rank r, so TT-SVD reproduces it)
        cores = tt_svd(g, module.out_factors, module.in_factors, module.rank)
        module.set_cores([c.to(module.cores[0].dtype) for c in cores])
        if module.bias is not None:
            module.bias.copy_(bias.to(module.bias.dtype))


@register_method("nnbcd-prune")
class NNBCDPrune(_NNBCD):
    """NN-BCD with a sparsity constraint; knob = number of kept weights of the layer."""

    knob_name = "kept weights"
    params_counted_as = "non-zero weights"

    def knobs(self, layer: nn.Module) -> range:
        self._check(layer)
        return range(0, layer.weight.numel() + 1)

    def layer_params(self, layer: nn.Module, kept: int) -> int:
        self._check(layer)
        return int(kept) + bias_params(layer)

    def factorize(self, layer: nn.Module, kept: int) -> nn.Module:
        self._check(layer)
        return PrunedLayer(layer, top_k_mask(layer.weight, int(kept)))

    def module_params(self, module: nn.Module) -> int:
        return pruned_params(module)

    def allocate(self, layers: dict[str, nn.Module], target_ratio: float) -> dict[str, int]:
        """The same keep fraction in every layer (as in the paper's experiments), rounded so
        kept weights + biases hit round(dense / target_ratio) exactly."""
        if target_ratio <= 0:
            raise CompressionError(f"target ratio must be positive, got {target_ratio}")
        for layer in layers.values():
            self._check(layer)
        sizes = {n: l.weight.numel() for n, l in layers.items()}
        biases = sum(dense_params(l) - sizes[n] for n, l in layers.items())
        total = sum(sizes.values())
        kept = min(round((total + biases) / target_ratio) - biases, total)
        if kept < 0:
            raise BudgetUnreachable(f"ratio {target_ratio} leaves less than the {biases} biases "
                                    f"that pruning keeps dense")
        share = {n: kept * s / total for n, s in sizes.items()}
        out = {n: int(math.floor(v)) for n, v in share.items()}
        for n in sorted(share, key=lambda n: (out[n] - share[n], n))[: kept - sum(out.values())]:
            out[n] += 1
        return out

    def projector(self, module: nn.Module):
        kept = module.kept()
        return lambda w: w * top_k_mask(w, kept)

    def write_back(self, module: nn.Module, g: torch.Tensor, bias: torch.Tensor) -> None:
        kept = module.kept()
        mask = top_k_mask(g, kept)
        module.inner.weight.copy_(g.to(module.inner.weight.dtype))
        module.set_mask(mask.to(module.mask.dtype))
        if module.inner.bias is not None:
            module.inner.bias.copy_(bias.to(module.inner.bias.dtype))
