"""Where NN-BCD applies: finding a network's trailing ReLU MLP head, the reason a target cannot
be trained by NN-BCD, and capturing the head's input. Used by ``methods.nnbcd.method``.

**Where it applies.** A ReLU MLP at the end of the network: the trailing run of Linear layers
(registration order) with matching sizes, every target layer in it, ReLU between them and
the last one giving the output (checked numerically on a batch before training). FC-2 is
such a network; for LeNet-5 / DigitNet the fc head qualifies and the conv part stays frozen,
its output on the training subset being the head's input X. Conv targets are skipped.
"""
from __future__ import annotations

import torch
from torch import nn

from bench.compressor import effective_weight, get_layer
from methods.prune import PrunedLayer
from methods.tt import TTLayer


def _is_replacement(m: nn.Module) -> bool:
    return (isinstance(m, TTLayer) and m.conv is None) or isinstance(m, PrunedLayer)


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
