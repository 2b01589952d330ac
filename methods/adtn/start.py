"""How an ADTN generator starts, and its scale: the identity / orthogonal initialisations, folding a
factor into the gates (``scale_``) and the Kronecker-rank-1 start from a weight (``init_rank1_``,
higher-order power method). Split out of ``methods.adtn.generator``, which holds the gates and
their contraction; ``ADTNGenerator`` inherits these methods from ``GeneratorStart``.
"""
from __future__ import annotations

import math

import torch

#: activations whose positive homogeneity (f(cx) = c f(x), c > 0) lets a scale be spread over all gates
HOMOGENEOUS = ("relu", "leaky_relu", "identity")


class GeneratorStart:
    """The initialisation and scale methods of ``ADTNGenerator`` (a mixin: it uses the generator's
    ``d``, ``q``, ``depth``, ``numel``, ``activation`` and gate parameters)."""

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
