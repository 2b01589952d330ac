"""The NN-BCD solver: the objective and its exact block updates on a ReLU MLP head (float64,
samples as rows), independent of any compressed format (a projection per layer is passed in).
Used by ``methods.nnbcd.method``.

**Objective.** Head layers l = 1..L, samples as rows, V_0 = X (N x d_0), Y one-hot:

    Phi = 1/N [ 1/2 ||V_L - Y||^2 + gamma/2 sum_{l<L} ||V_l - relu(U_l)||^2
                + gamma/2 ||V_L - U_L||^2 + rho/2 sum_l ||U_l - V_{l-1} W_l^T - 1 b_l^T||^2 ]
          + tau/2 sum_{l in targets} ||W_l - G_l||^2,        G_l in C_l,

C_l = matrices of TT rank <= r in ``tt``'s TT-matrix format (``nnbcd-tt``) or with at most k
non-zeros (``nnbcd-prune``). Biases are kept and trained (the authors' notebooks zero them).

**Updates** (one iteration = one backward sweep l = L..1; every block is the exact minimiser
of Phi plus alpha/2 ||block - previous||^2, so Phi never increases):
V_L = (Y + gamma U_L + alpha V_L')/(1 + gamma + alpha);
U_L = (gamma V_L + rho A_L + alpha U_L')/(gamma + rho + alpha), A_l = V_{l-1} W_l^T + b_l;
[W_l b_l] = ridge regression of U_l on [V_{l-1} 1] with the proximal pulls alpha (to the
previous value) and tau (W_l to G_l): one (d+1)x(d+1) linear solve;
G_l = projection of W_l on C_l (magnitude top-k, exact; TT-SVD with ``methods.tt.tt_svd``,
kept only if it is closer to W_l than the previous G_l, since TT-SVD is quasi-optimal, so Phi
stays monotone);
V_{l-1} = (rho W_l^T W_l + (gamma+alpha) I)^-1 applied to rho W_l^T (U_l - b_l) + gamma relu(U_{l-1}) + alpha V';
U_{l-1} = elementwise closed-form proximal step of ReLU (the better of the u >= 0 and
u <= 0 stationary points).
"""
from __future__ import annotations

import torch


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
