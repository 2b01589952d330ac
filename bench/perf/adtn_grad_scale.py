"""Which ADTN ``grad_scale`` default: plain gradients (1.0) or gain^-1/2 ('sqrt')?

``python bench/perf/adtn_grad_scale.py [--out results/adtn-grad-scale/grad_scale.json]
[--seeds 0,1,2] [--ratios 32,128] [--prefit-steps 200]``

MNIST FC-2 with only fc1 compressed (fc2 stays dense, as the suites now do), the mnist
suite's budgets and recipes: the dense baseline is trained here with the suite's training
recipe (seed 0, 6 epochs, ~10 s), then for each ratio and seed the method allocates a depth,
pre-fits fc1 (``prefit_steps`` 200, the suites' budget) and fine-tunes 1 epoch with the
suite's recipe (SGD lr 0.01, momentum 0.9, wd 5e-4, cosine, batch 128), through
``method.compress`` / ``method.finetune`` as a job does. Other options are the method's
defaults (layout padded, prefit_schedule cosine).

The two grad_scale arms of one (ratio, seed) share the pre-fit: ``grad_scale`` only sets a
buffer after the pre-fit (and ``sgd_gain`` draws from its own generator), so the 1.0 arm is
the 'sqrt' arm's compressed network with the buffer set to 1.0, fine-tuned from the same
seed. Prints a table (mean +- std over seeds, test accuracy after fine-tuning) and writes
JSON. About 10 minutes on one CPU core.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.compressor import FinetuneContext, get_layer  # noqa: E402
from bench.data import load_splits  # noqa: E402
from bench.models import build_network  # noqa: E402
from bench.registry import get_method  # noqa: E402
from bench.train import evaluate, train  # noqa: E402

TRAIN = {"epochs": 6, "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
         "weight_decay": 5.0e-4, "schedule": "cosine"}
FINETUNE = {"epochs": 1, "batch_size": 128, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
            "weight_decay": 5.0e-4, "schedule": "cosine"}
ARMS = ("sqrt", 1.0)


def finetune(method, model, originals, knobs, data, seed: int) -> None:
    view = data.train_val()
    ctx = FinetuneContext(train=lambda m, epochs=None: train(m, view, FINETUNE, seed=seed, epochs=epochs, progress=False),
                          epochs=FINETUNE["epochs"], layer_names=["fc1"], dense_layers=originals, knobs=knobs,
                          method=method, data=view, device=data.x_train.device)
    method.finetune(model, ctx)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "adtn-grad-scale" / "grad_scale.json"))
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ratios", default="32,128")
    ap.add_argument("--prefit-steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    t0 = time.perf_counter()
    data = load_splits("mnist", Path(args.data))
    torch.manual_seed(0)
    base = build_network("fc2", (1, 28, 28), 10)
    train(base, data.train_val(), TRAIN, seed=0, progress=False)
    acc_dense = evaluate(base, data.x_test, data.y_test)
    print(f"dense FC-2: {acc_dense:.2f} % test ({time.perf_counter() - t0:.0f} s)", flush=True)
    runs = []
    for ratio in ratios:
        for seed in seeds:
            method = get_method("adtn", grad_scale="sqrt", prefit_steps=args.prefit_steps)
            model = copy.deepcopy(base)
            originals = {"fc1": copy.deepcopy(model.fc1)}
            knobs = method.allocate(originals, ratio)
            torch.manual_seed(seed)
            info = method.compress(model, knobs)["fc1"]
            acc_before = evaluate(model, data.x_test, data.y_test)
            for arm in ARMS:
                net = copy.deepcopy(model)
                if arm != "sqrt":
                    get_layer(net, "fc1").generator.grad_scale.fill_(float(arm))
                arm_method = get_method("adtn", grad_scale=arm, prefit_steps=args.prefit_steps)
                t1 = time.perf_counter()
                finetune(arm_method, net, originals, knobs, data, seed)
                run = {"ratio": ratio, "seed": seed, "grad_scale": arm, "depth": knobs["fc1"],
                       "params": method.layer_params(originals["fc1"], knobs["fc1"]),
                       "scale_used": float(get_layer(net, "fc1").generator.grad_scale),
                       "sgd_gain": info["sgd_gain"], "prefit_rel_error": info["prefit_rel_error"],
                       "layout": info["layout"], "acc_before": acc_before,
                       "acc_after": evaluate(net, data.x_test, data.y_test),
                       "acc_val_after": evaluate(net, data.x_val, data.y_val),
                       "finetune_s": round(time.perf_counter() - t1, 1)}
                runs.append(run)
                print(json.dumps(run), flush=True)
    table = []
    for ratio in ratios:
        for arm in ARMS:
            accs = [r["acc_after"] for r in runs if r["ratio"] == ratio and r["grad_scale"] == arm]
            rs = [r for r in runs if r["ratio"] == ratio and r["grad_scale"] == arm]
            table.append({"ratio": ratio, "grad_scale": arm, "depth": rs[0]["depth"], "params": rs[0]["params"],
                          "n": len(accs), "mean": statistics.mean(accs),
                          "std": statistics.stdev(accs) if len(accs) > 1 else 0.0})
    print(f"\n| ratio | depth | params (fc1, bias incl.) | grad_scale | test acc after 1 epoch (mean ± std, n={len(seeds)}) |")
    print("|---|---|---|---|---|")
    for row in table:
        print(f"| {row['ratio']:g}x | {row['depth']} | {row['params']:,} | {row['grad_scale']} | "
              f"{row['mean']:.2f} ± {row['std']:.2f} |")
    result = {"network": "fc2", "dataset": "mnist", "layers": ["fc1"], "acc_dense": acc_dense, "train": TRAIN,
              "finetune": FINETUNE, "prefit_steps": args.prefit_steps, "seeds": seeds, "ratios": ratios,
              "table": table, "runs": runs, "seconds": round(time.perf_counter() - t0, 1),
              "threads": args.threads}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
