"""Peer check: our ``tt``/``tucker``/``cp`` against tensorly-torch (tltorch) factorised layers.

Not part of the benchmark and not a project dependency; run it from a scratch venv:

    python3 -m venv /tmp/tlt && /tmp/tlt/bin/pip install torch==2.13.0 tensorly==0.10.0 tensorly-torch packaging
    PYTHONPATH=. /tmp/tlt/bin/python -m bench.perf peer_tltorch [--data-dir DIR] [--ratios 4 16 64] [--json out.json]

For each layer (random ones, and FC-2 / LeNet-5 layers trained here for one epoch on MNIST),
method and per-layer compression ratio, our replacement uses the knob the default allocator
picks; tltorch's layer (``FactorizedLinear.from_linear`` / ``FactorizedConv.from_conv``) gets
the same tensorised shape and rank, hence the same structure and parameter count up to its own
extras (CP weights vector, Tucker spatial factors). tltorch's TT conv is a TT of the
(in, kh, kw, out) kernel, which is also our default conv layout; its rank is chosen to match
our parameter count (the same rank unless ``tt`` runs with ``conv_layout="matrix"``).
Reported: parameters, relative weight error, relative output error on the layer's real inputs
(Gaussian ones for random layers), seconds to factorise (one run each, ``--threads`` torch
threads), and test accuracy of the networks with the listed layers replaced (no fine-tuning).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.metrics import count_params

METHODS = ("tt", "tucker", "cp")


def need_tltorch():
    try:
        import tltorch  # noqa: F401  (sets tensorly's global backend to pytorch; ours does not care)
        from tltorch.factorized_layers.factorized_convolution import tensor_to_kernel
    except ImportError:
        sys.exit("bench.perf peer_tltorch needs tensorly-torch (and packaging): pip install tensorly-torch packaging "
                 "in a scratch venv; it is not a project dependency")
    return tltorch, tensor_to_kernel


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# --- tltorch layers matching ours -----------------------------------------------------------
def tt_conv_rank(layer: nn.Conv2d, target: int) -> int:
    """tltorch's TT conv factorises the (in, kh, kw, out) kernel: the uniform rank whose
    parameter count is closest to ``target``."""
    from methods.tt import bond_caps, bond_ranks, kernel_modes, tt_params

    modes = kernel_modes(layer)  # ours as a TT-matrix: the same (in, kh, kw, out) chain

    def params(r: int) -> int:
        return tt_params(bond_ranks(r, *modes), *modes) + layer.out_channels

    return min(range(1, max(bond_caps(*modes)) + 1), key=lambda r: (abs(params(r) - target), r))


def peer_layer(tltorch, tensor_to_kernel, method: str, layer: nn.Module, ours: nn.Module):
    """(tltorch module, its dense weight, seconds to factorise) with our structure and rank."""
    info = ours.tnbench_info
    if isinstance(layer, nn.Linear):
        if method == "tt":
            fact, rank, out_sh, in_sh = "blocktt", info["rank"], info["out_modes"], info["in_modes"]
        else:
            p = len(ours.out_factors)
            out_sh, in_sh = info["modes"][:p], info["modes"][p:]
            fact, rank = ("tucker", tuple(info["ranks"])) if method == "tucker" else ("cp", info["rank"])
        mod, secs = timed(lambda: tltorch.FactorizedLinear.from_linear(
            layer, auto_tensorize=False, in_tensorized_features=tuple(in_sh),
            out_tensorized_features=tuple(out_sh), factorization=fact, rank=rank))
        return mod, mod.weight.to_matrix().detach(), secs
    kw = {}
    if method == "tucker":
        fact, rank, kw = "tucker", (*info["ranks"], *layer.kernel_size), {"fixed_rank_modes": "spatial"}
    elif method == "cp":
        fact, rank = "cp", info["rank"]
    else:
        fact, rank = "tt", tt_conv_rank(layer, count_params(ours))
    mod, secs = timed(lambda: tltorch.FactorizedConv.from_conv(layer, rank=rank, factorization=fact,
                                                               implementation="factorized", **kw))
    return mod, tensor_to_kernel(fact, mod.weight.to_tensor()).detach(), secs


# --- layers and data ----------------------------------------------------------------------------
def train_one_epoch(model: nn.Module, data, batch: int = 128, lr: float = 0.05) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    perm = torch.randperm(data.x_train.shape[0], generator=torch.Generator().manual_seed(0))
    model.train()
    for i in range(0, len(perm), batch):
        idx = perm[i:i + batch]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return sum((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item()
               for i in range(0, len(x), 1000)) / len(x)


@torch.no_grad()
def layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen = {}

    def keep(name):
        def hook(module, args, out):  # returns None: the output is left alone
            seen[name] = args[0]
        return hook

    hooks = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    model(x)
    for h in hooks:
        h.remove()
    return seen


def cases(data_dir: str, skip_trained: bool):
    """(label, layer, inputs, network or None) for random and trained layers."""
    torch.manual_seed(0)
    yield "random Linear 784x256", nn.Linear(784, 256).eval(), torch.randn(512, 784), None
    yield "random Conv 64->128 3x3", nn.Conv2d(64, 128, 3, padding=1).eval(), torch.randn(16, 64, 12, 12), None
    if skip_trained:
        return
    from bench.data import load_splits
    from bench.models import build_network

    data = load_splits("mnist", Path(data_dir) if data_dir else None, download=False)
    for net, names in (("fc2", ["fc1", "fc2"]), ("lenet5", ["conv2", "conv3", "fc1"])):
        torch.manual_seed(0)
        model = build_network(net, data.input_shape, data.num_classes)
        _, secs = timed(lambda: train_one_epoch(model, data))
        acc = accuracy(model, data.x_test, data.y_test)
        print(f"trained {net} for 1 epoch in {secs:.0f} s: test accuracy {acc:.4f}", flush=True)
        inputs = layer_inputs(model, names, data.x_test[:1000])
        for n in names:
            yield f"trained {net}.{n}", model.get_submodule(n), inputs[n], (net, model, names, data)


# --- main -----------------------------------------------------------------------------------------
def run(args) -> list[dict]:
    tltorch, tensor_to_kernel = need_tltorch()
    from bench.compressor import replace_layer
    from bench.registry import get_method

    torch.set_num_threads(args.threads)
    ours_m = {m: get_method(m) for m in METHODS}
    warm = nn.Linear(16, 12)
    for m in METHODS:  # first calls pay for imports and lazy initialisation
        o = ours_m[m].factorize(warm, 2)
        peer_layer(tltorch, tensor_to_kernel, m, warm, o)
    rows, nets = [], {}
    for label, layer, x, net in cases(args.data_dir, args.skip_trained):
        with torch.no_grad():
            y = layer(x)
        if net is not None:
            nets[net[0]] = net
        for m in METHODS:
            for ratio in args.ratios:
                knob = ours_m[m].allocate({"l": layer}, ratio)["l"]
                ours, t_ours = timed(lambda: ours_m[m].factorize(layer, knob))
                peer, w_peer, t_peer = peer_layer(tltorch, tensor_to_kernel, m, layer, ours)
                with torch.no_grad():
                    row = {"layer": label, "method": m, "ratio": ratio, "knob": knob,
                           "params_ours": count_params(ours), "params_tltorch": count_params(peer),
                           "w_err_ours": rel(ours.effective_weight(), layer.weight),
                           "w_err_tltorch": rel(w_peer, layer.weight),
                           "out_err_ours": rel(ours(x), y), "out_err_tltorch": rel(peer(x), y),
                           "s_ours": t_ours, "s_tltorch": t_peer}
                rows.append(row)
                print(" | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()), flush=True)
    for net, model, names, data in nets.values():
        for m in METHODS:
            for ratio in args.ratios:
                accs = {}
                for who in ("ours", "tltorch"):
                    net_copy = copy.deepcopy(model).eval()
                    for n in names:
                        layer = net_copy.get_submodule(n)
                        o = ours_m[m].factorize(layer, ours_m[m].allocate({"l": layer}, ratio)["l"])
                        new = o if who == "ours" else peer_layer(tltorch, tensor_to_kernel, m, layer, o)[0]
                        replace_layer(net_copy, n, new)
                    accs[who] = accuracy(net_copy, data.x_test, data.y_test)
                rows.append({"layer": f"{net} {'+'.join(names)} accuracy", "method": m, "ratio": ratio,
                             "acc_ours": accs["ours"], "acc_tltorch": accs["tltorch"]})
                print(f"{net} {m} {ratio}x accuracy (no fine-tuning): ours {accs['ours']:.4f} "
                      f"tltorch {accs['tltorch']:.4f}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| layer | method | ratio | params ours / tltorch | weight err ours / tltorch "
            "| output err ours / tltorch | s ours / tltorch |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "acc_ours" in r:
            lines.append(f"| {r['layer']} | {r['method']} | {r['ratio']} | | accuracy {r['acc_ours']:.4f} / "
                         f"{r['acc_tltorch']:.4f} | | |")
        else:
            lines.append(f"| {r['layer']} | {r['method']} | {r['ratio']} | {r['params_ours']} / {r['params_tltorch']} "
                         f"| {r['w_err_ours']:.4f} / {r['w_err_tltorch']:.4f} | {r['out_err_ours']:.4f} / "
                         f"{r['out_err_tltorch']:.4f} | {r['s_ours']:.2f} / {r['s_tltorch']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $TNBENCH_DATA or ./data)")
    p.add_argument("--ratios", type=float, nargs="+", default=[4, 16, 64])
    p.add_argument("--threads", type=int, default=1, help="torch threads (timings are per thread count)")
    p.add_argument("--skip-trained", action="store_true", help="random layers only (no MNIST needed)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    rows = run(args)
    print()
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
