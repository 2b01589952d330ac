"""Dense baselines: trained once per (network, dataset, seed, recipe, data config), cached as
checkpoints under ``<out>/checkpoints`` and shared by every suite writing to that root."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.data import DataSplits
from bench.models import build_network
from bench.records import config_key
from bench.train import evaluate, prepare_model, train


def checkpoint_path(root: Path, config: dict[str, Any]) -> Path:
    return Path(root) / "checkpoints" / f"{config['network']}_{config['dataset']}_s{config['seed']}_{config_key(config)}.pt"


def get_baseline(root: Path, config: dict[str, Any], data: DataSplits, progress: bool = True) -> tuple[nn.Module, dict]:
    """The trained dense model and its summary (test/val accuracy, training time)."""
    path = checkpoint_path(root, config)
    model = build_network(config["network"], data.input_shape, data.num_classes)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        prepare_model(model, data.x_train.device)
        return model, json.loads(meta_path.read_text())
    torch.manual_seed(config["seed"])
    model = build_network(config["network"], data.input_shape, data.num_classes)
    t0 = time.perf_counter()
    summary = train(model, data, config["train"], seed=config["seed"],
                    desc=f"dense {config['network']}/{config['dataset']} s{config['seed']}", progress=progress)
    meta = {"config": config, "acc_test": evaluate(model, data.x_test, data.y_test),
            "acc_val": summary["val_acc"], "time_train_s": time.perf_counter() - t0,
            "data_fingerprint": data.fingerprint}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    meta_path.write_text(json.dumps(meta, indent=1))
    return model, meta
