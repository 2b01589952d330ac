"""Every bad input is one line on stderr naming the bad value and the valid ones, exit code 2,
before any job runs or any file is written.

Each row: (extra argv, the bad value as the message must show it, a piece of what is valid).
``@name`` tokens stand for files made in tmp_path (see MAKERS); ``@out`` is the --out folder,
which must stay empty."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import torch

from bench.cli import main
from tests.conftest import slow_factorize

CASES = [
    # names that would leave their roots: reuse reads --out/<name>/, base reads the suites folder
    (["--set", "protocol.reuse=['..']"], "reuse ['..']", "no paths"),
    (["--suite", "@base_outside"], "base suite '../../../etc/passwd'", "is unknown or circular"),
    (["--set", "job_time_limit_s=0"], "job_time_limit_s 0", "seconds from 1 to 10,000,000"),
    # bounded inputs: an alias bomb, deep nesting, a suite file that is not UTF-8
    (["--suite", "@alias_bomb"], "more than 100,000 values once its aliases are expanded", "a suite needs far less"),
    (["--set", "finetune.x=" + "[" * 40 + "]" * 40], "nested more than 32 levels deep", "a suite needs far less"),
    (["--suite", "@not_utf8"], "@not_utf8", "not UTF-8 text (byte 16)"),
    # method options checked before any baseline trains; a method listed twice
    (["--set", "methods=[{method: tt, options: {bogus: 1}}]"], "unknown option(s) bogus", "valid: cores, conv_layout"),
    (["--set", "methods=[{method: adtn, options: {max_depth: 0}}]"], "'adtn' options {'max_depth': 0}", "max_depth 0: expected an integer >= 1"),
    (["--set", "methods=[svd, svd]"], "'svd' is listed twice", "different label"),
    # malformed YAML: one line, not a traceback
    (["--set", "protocol.seeds=[0,"], "protocol.seeds=[0,", "not valid YAML"),
    (["--suite", "@bad_yaml"], "@bad_yaml", "not valid YAML"),
    # values accepted silently before
    (["--set", "protocol.seeds=[-1]"], "-1", "integers in 0..4294967295"),
    (["--set", "protocol.seeds=1.5"], "seeds 1.5", "list of integers"),
    (["--set", "finetune.epochs=-3"], "finetune.epochs -3", "number in 0..100,000"),
    (["--set", "data.train_subset=-5"], "data.train_subset -5", "integer >= 1"),
    (["--set", "data.train_subset=0"], "data.train_subset 0", "integer >= 1"),
    # values that used to become failed jobs
    (["--set", "finetune.epochs=abc"], "finetune.epochs 'abc'", "number in 0..100,000"),
    (["--set", "finetune.lr=.nan"], "finetune.lr nan", "finite number > 0"),
    (["--set", "finetune.lr=-1"], "finetune.lr -1", "finite number > 0"),
    (["--set", "finetune.batch_size=0"], "finetune.batch_size 0", "integer in 1..1,048,576"),
    (["--set", "train.batch_size=1000000000000"], "train.batch_size 1000000000000", "integer in 1..1,048,576"),
    (["--set", "train.epochs=1e9"], "train.epochs 1000000000.0", "0..100,000"),
    (["--set", "train.epochs=0"], "train.epochs 0", "the dense baseline must train"),  # an untrained baseline
    (["--set", "train.warmup_epochs=1e9"], "train.warmup_epochs 1000000000.0", "not shorter than the run"),
    (["--set", "finetune.warmup_epochs=3"], "finetune.warmup_epochs 3 (digitnet): not shorter than the run it warms up (0.5 epochs)", "give warmup_epochs < epochs"),
    (["--set", "finetune.label_smoothing=1.0"], "finetune.label_smoothing 1.0", "[0, 1)"),  # uniform targets
    (["--set", "methods=[{method: svd, knobs: [1, 1]}]"], "method 'svd' knobs: 1 is listed twice", "[1, 1]"),
    (["--set", "methods=[{method: prune, knobs: [1.5]}]"], "kept weights 1.5", "whole number in 0..4,608"),
    (["--set", "methods=[{method: prune, knobs: [100000000]}]"], "kept weights 100000000", "0..4,608"),
    (["--set", "recipes={digitnet: {train: {epochs: 0}}}"], "recipes.digitnet.train.epochs 0", "epochs > 0"),
    (["--set", "data.train_subset=1000000"], "data.train_subset 1000000", "digits has 1,294 training images"),
    (["--set", "data.val_fraction=1.5"], "data.val_fraction 1.5", "[0, 1)"),
    (["--set", "ratios=[inf]"], "inf", "finite numbers >= 1"),
    (["--set", "ratios=[0.5]"], "0.5", "finite numbers >= 1"),  # more parameters than dense: accepted before
    (["--set", "networks={fc2: [fc9]}"], "'fc9'", "its layers: fc1, fc2"),
    (["--set", "networks={digitnet: [conv3]}"], "'conv3'", "its layers: conv1, conv2, fc1, fc2"),
    (["--set", "networks={lenet5: [fc1]}"], "lenet5 cannot be built for dataset digits", "28x28"),
    # messages that did not say what was wrong
    (["--set", "protocol.seeds=-1"], "seeds -1", "list of integers"),
    (["--set", "finetune=3"], "finetune 3", "expected a mapping of recipe keys"),
    (["--set", "protocol.seeds=[abc]"], "'abc'", "integers in 0..4294967295"),
    (["--set", "protocol.seeds=[0, 0]"], "0", "listed twice"),
    # recipe values of the wrong type
    (["--set", "finetune.lr='0.01'"], "finetune.lr '0.01'", "finite number > 0"),
    (["--set", "train.batch_size=64.0"], "train.batch_size 64.0", "integer in 1..1,048,576"),
    (["--set", "train.epochs=true"], "train.epochs True", "number in 0..100,000"),
    (["--set", "finetune.nesterov=1"], "finetune.nesterov 1", "true or false"),
    (["--set", "finetune.momentum=1.5"], "finetune.momentum 1.5", "[0, 1)"),
    (["--set", "train.compile=1"], "train.compile 1", "true or false"),
    (["--set", "finetune.optimizer=rmsprop"], "'rmsprop'", "sgd, adam, adamw"),
    (["--set", "finetune.schedule=[cosine]"], "['cosine']", "cosine, constant, step"),
    (["--set", "recipes={digitnet: {finetune: {lr: -2}}}"], "recipes.digitnet.finetune.lr -2", "> 0"),
    (["--set", "recipes={digitnet: {tune: {}}}"], "recipes.digitnet", "keys train, finetune"),
    # other keys of the wrong shape
    (["--set", "datasets=digits"], "datasets 'digits'", "list of dataset names"),
    (["--set", "methods=svd"], "methods 'svd'", "list of method names"),
    (["--set", "methods=[{method: svd, knobs: 3}]"], "knobs 3", "non-empty list"),
    (["--set", "data=3"], "data 3", "val_fraction, train_subset"),
    (["--set", "fit_only=maybe"], "'maybe'", "true or false"),
    (["--set", "networks={digitnet: fc1}"], "'fc1'", "list of layer names"),
    # the new keys
    (["--set", "paper=[figure1]"], "'figure1'", "accuracy, fit, cost"),
    (["--set", "protocol.finetune_epochs=[0]"], "0", "finite numbers > 0"),
    (["--set", "protocol.finetune_epochs=2"], "finetune_epochs 2", "list of finite numbers > 0"),
    (["--set", "protocol.lr_grid=[0.01, -0.1]"], "-0.1", "finite numbers > 0"),
    (["--set", "protocol.lr_grid=[.inf]"], "inf", "finite numbers > 0"),
    (["--set", "protocol.tune_epochs=1"], "tune_epochs 1", "no protocol.finetune_epochs sweep"),
    (["--set", "protocol.finetune_epochs=[1, 2]", "--set", "protocol.tune_epochs=3", "--set", "protocol.lr_grid=[0.01]"], "tune_epochs 3",
     "network digitnet has finetune_epochs [1, 2]"),
    (["--set", "protocol.network_epochs={digitnet: [0]}"], "protocol.network_epochs.digitnet.finetune_epochs: bad value 0",
     "finite numbers > 0"),
    (["--set", "protocol.finetune_epochs=[1, 2]", "--set", "protocol.tune_epochs=2", "--set", "protocol.lr_grid=[0.01]",
      "--set", "protocol.network_epochs={digitnet: [1]}"], "tune_epochs 2", "network digitnet has finetune_epochs [1]"),
    (["--set", "protocol.reuse=mnist"], "reuse 'mnist'", "list of other suites' names"),
    (["--set", "protocol.reuse=['../x']"], "reuse ['../x']", "list of other suites' names"),
    # a value repeated where a repeat means nothing more
    (["--set", "datasets=[digits, digits]"], "'digits' is listed twice", "datasets"),
    (["--set", "networks={digitnet: [fc1, fc1]}"], "'fc1' is listed twice", "networks.digitnet"),
    (["--set", "protocol.reuse=[a, a]"], "'a' is listed twice", "protocol.reuse"),
    # labels: empty, a path, the reference's or another method's name
    (["--set", "methods=[{method: svd, label: ''}]"], "label ''", "a word of letters"),
    (["--set", "methods=[{method: svd, label: 'a/b'}]"], "label 'a/b'", "a word of letters"),
    (["--set", "methods=[{method: svd, label: dense}]"], "label 'dense'", "the name of another method"),
    (["--set", "methods=[{method: dense, label: ref}]"], "label 'ref'", "the reference keeps its own name"),
    # a size knob or an option the method cannot size with, refused before any baseline trains
    (["--set", "methods=[{method: svd, knobs: [0]}]"], "rank 0", "rank must be >= 1"),
    (["--set", "methods=[{method: svd, knobs: [100000]}]"], "rank 100000", "above full rank"),
    (["--set", "methods=[{method: tt, knobs: [.nan]}]"], "tt_rank nan", "positive integer"),
    (["--set", "methods=[{method: adtn, knobs: [1.5]}]"], "depth 1.5", "positive integer"),
    (["--set", "methods=[{method: adtn, options: {local_dim: 1000000}}]"], "local_dim 1000000", "<= 16"),
    (["--set", "methods=[{method: cp, options: {max_als_flops: -1}}]"], "max_als_flops -1", "> 0"),
    (["--set", "methods=[{method: adtn, options: {prefit_lr: .nan}}]"], "prefit_lr nan", "> 0"),
    (["--set", "methods=[{method: nnbcd-tt, options: {gamma: 0}}]"], "gamma 0", "> 0"),
    (["--set", "methods=[{method: alds, options: {restarts: 0}}]"], "restarts 0", ">= 1"),
    # keys --set cannot mean
    (["--set", "base=mnist"], "--set base", "write a suite file with base: NAME"),
    (["--set", "finetune..lr=0.1"], "finetune..lr", "an empty key part"),
    # names the suite does not have
    (["--methods", "nope"], "['nope']", "it has: dense, svd"),
    (["--networks", "fc2"], "['fc2']", "it has: digitnet"),
]

#: bad inputs the CLI (bench/cli.py) refuses: devices, plugins, missing records, data files
CLI_CASES = [
    pytest.param(["--devices", "cuda:0,cuda:1", "--methods", "dense"], "cuda:0", "cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
    (["--plugin", "@plugin_syntax"], "@plugin_syntax", "SyntaxError"),
    (["--plugin", "@plugin_raises"], "@plugin_raises", "boom"),
    (["--plugin", "@plugin_exits"], "@plugin_exits", "it called sys.exit(0) on import"),
    (["--report-only"], "tiny0", "no records"),
    (["--time-budget", "5", "--calibration", "@out_dir"], "@out_dir", "not a regular file"),
    # empty values meant "all" or "here"; a method or network given twice
    (["--devices", ""], "--devices ''", "an empty value"),
    # flags the command would not read: refused, not ignored
    (["--rerun", "--report-only"], "--rerun with --report-only", "only a run reads it"),
    (["--dry-run", "--report-only"], "--dry-run and --report-only", "give one"),
    (["--time-budget", "5", "--dry-run"], "--time-budget with --dry-run", "only a run reads it"),
    (["--device", "cpu", "--devices", "cpu,cpu"], "--device and --devices", "give one"),
    (["--backend", "ray", "--devices", "cpu"], "--devices with --backend ray", "leave --devices out"),
    (["--address", "auto"], "--address auto", "only --backend ray reads it"),
    (["--methods", ""], "--methods ''", "an empty value"),
    (["--methods", "svd,,dense"], "--methods 'svd,,dense'", "an empty value"),
    (["--networks", " "], "--networks ' '", "an empty value"),
    (["--methods", "svd,svd"], "--methods 'svd,svd'", "svd given twice"),
    (["--devices", ",".join(["cpu"] * 65)], "65 workers asked for", "at most 64"),
    (["--out", ""], "--out ''", "an empty value; give a folder"),
    (["--data-dir", " "], "--data-dir ' '", "an empty value; give a folder"),
    (["--calibration", ""], "--calibration ''", "an empty value"),
    (["--plugin", ""], "plugin ''", "an empty value"),
    (["--check-plugin", ""], "plugin ''", "an empty value"),
    (["--plugin", "@out_dir"], "@out_dir", "is a folder; give a .py file or a dotted import path"),
    # a file where a folder goes: refused by the dry run too, which used to plan what the run refused
    (["--dry-run", "--data-dir", "@a_file"], "@a_file", "a file, not a folder; give a folder"),
    (["--dry-run", "--out", "@a_file"], "@a_file", "a file, not a folder; give a folder"),
    # damaged dataset files, with --no-download: bench.data.verify_dataset up front
    (["--set", "datasets=[mnist]", "--set", "networks={fc2: [fc1]}", "--data-dir", "@mnist_truncated_gzip"],
     "train-images-idx3-ubyte.gz", "truncated or corrupt gzip"),
    (["--set", "datasets=[mnist]", "--set", "networks={fc2: [fc1]}", "--data-dir", "@mnist_bad_magic"],
     "train-images-idx3-ubyte.gz", "bad magic"),
    (["--set", "datasets=[mnist]", "--set", "networks={fc2: [fc1]}", "--data-dir", "@mnist_wrong_size"],
     "train-images-idx3-ubyte.gz", "wrong size"),
    (["--set", "datasets=[mnist]", "--set", "networks={fc2: [fc1]}", "--data-dir", "@mnist_checksum"],
     "train-images-idx3-ubyte.gz", "checksum mismatch"),
    (["--set", "datasets=[mnist]", "--set", "networks={fc2: [fc1]}", "--data-dir", "@mnist_gzip_bomb"],
     "train-images-idx3-ubyte.gz", "decompresses to more than the official file's 47,040,016 bytes"),
    (["--set", "datasets=[cifar10]", "--set", "networks={alexnet: [classifier.0]}", "--data-dir", "@cifar_garbage"],
     "data_batch_1", "cannot unpickle"),
]


def _idx(shape) -> bytes:
    a = np.zeros(shape, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()


def _mnist(tmp_path, first: bytes):
    """An MNIST folder whose first file (train images) is ``first``, the others well-formed."""
    folder = tmp_path / "mnist_data" / "MNIST" / "raw"
    folder.mkdir(parents=True)
    from bench.data.idx import FILES

    for i, stem in enumerate(FILES):
        (folder / f"{stem}.gz").write_bytes(first if i == 0 else gzip.compress(_idx((2,))))
    return folder.parent.parent


def _cifar_garbage(tmp_path):
    from bench.data.cifar import SPECS

    folder = tmp_path / "cifar_data" / SPECS["cifar10"].folder
    folder.mkdir(parents=True)
    for f in SPECS["cifar10"].files:
        (folder / f).write_bytes(b"\x80\x02garbage")
    return folder.parent


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


BOMB = "".join(f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]\n"
               for p, c in zip("abcdefgh", "bcdefghi"))  # 9^8 = 43 million values from 9 lines


def _bytes(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


MAKERS = {
    "@bad_yaml": lambda t: _write(t, "broken.yaml", "datasets: [digits\nmethods: [svd]\n"),
    "@alias_bomb": lambda t: _write(t, "bomb.yaml", "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\n" + BOMB
                                    + "datasets: [digits]\nnetworks: {digitnet: *i}\nmethods: [svd]\n"),
    "@base_outside": lambda t: _write(t, "outside.yaml", "base: ../../../etc/passwd\nmethods: [svd]\n"),
    "@not_utf8": lambda t: _bytes(t, "latin1.yaml", "description: caf\xe9\n".encode("latin-1")),
    "@plugin_syntax": lambda t: _write(t, "syntax_plugin.py", "def broken(:\n"),
    "@plugin_raises": lambda t: _write(t, "raising_plugin.py", "raise RuntimeError('boom')\n"),
    "@plugin_exits": lambda t: _write(t, "exiting_plugin.py", "import sys\nsys.exit(0)\n"),
    "@mnist_truncated_gzip": lambda t: _mnist(t, gzip.compress(_idx((6, 28, 28)))[:-12]),  # no trailer
    "@mnist_bad_magic": lambda t: _mnist(t, gzip.compress(b"\x00\x00\x09\x03" + bytes(20))),
    "@mnist_wrong_size": lambda t: _mnist(t, gzip.compress(_idx((6, 28, 28))[:-5])),
    "@mnist_checksum": lambda t: _mnist(t, gzip.compress(_idx((6, 28, 28)))),
    "@mnist_gzip_bomb": lambda t: _mnist(t, gzip.compress(bytes(64 << 20), 1)),  # 64 MiB of zeros in ~0.3 MB
    "@cifar_garbage": _cifar_garbage,
    "@out_dir": lambda t: (t / "a_folder").mkdir() or t / "a_folder",
    "@a_file": lambda t: _write(t, "a_file.txt", "not a folder\n"),
}


def _table_row(argv, code, err, out, tmp_path) -> None:
    """With TNBENCH_HOSTILE_TABLE=FILE, append this case (``argv``: its own flags, not the shared
    ones) as a Markdown row (command, exit code, first stderr line, files written under --out):
    the table docs/RELIABILITY.md shows."""
    table = os.environ.get("TNBENCH_HOSTILE_TABLE")
    if not table:
        return
    cmd = " ".join(a.replace(str(tmp_path), "T") for a in argv).replace("|", "\\|")
    first = (err.splitlines() or [""])[0].replace(str(tmp_path), "T").replace("|", "\\|")
    written = sum(1 for _ in out.rglob("*")) if out.exists() else 0
    with open(table, "a", encoding="utf-8") as f:
        f.write(f"| `{cmd[:120]}` | {code} | {first[:160]} | {written} |\n")


def _check_refused(argv, bad, valid, tiny_suite, tmp_path, capsys):
    out = tmp_path / "out"
    tokens = {"@tiny": str(tiny_suite()), "@out": str(out)}
    for token, make in MAKERS.items():
        if token in argv or token == bad:
            tokens[token] = str(make(tmp_path))
    base = ["--suite", "@tiny", "--out", "@out", "--no-download", "--no-progress",
            "--data-dir", str(tmp_path / "no_data")]
    argv = [tokens.get(a, a) for a in base + list(argv)]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    _table_row(argv[len(base):], code, err, out, tmp_path)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert tokens.get(bad, bad) in err and valid in err, err
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


@pytest.mark.parametrize("argv, bad, valid", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, bad, valid, tiny_suite, tmp_path, capsys):
    _check_refused(argv, bad, valid, tiny_suite, tmp_path, capsys)


@pytest.mark.parametrize("argv, bad, valid", CLI_CASES,
                         ids=[" ".join((c.values if hasattr(c, "values") else c)[0]) for c in CLI_CASES])
def test_bad_cli_input_is_one_line_exit_2_and_writes_nothing(argv, bad, valid, tiny_suite, tmp_path, capsys):
    _check_refused(argv, bad, valid, tiny_suite, tmp_path, capsys)


def _out_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    return path


def _records_dir(tmp_path, suite):
    out = tmp_path / "outdir"
    (out / suite.stem / "runs.jsonl").mkdir(parents=True)
    return out


def _records_to_null(tmp_path, suite):
    out = tmp_path / "outnull"
    (out / suite.stem).mkdir(parents=True)
    (out / suite.stem / "runs.jsonl").symlink_to("/dev/null")
    return out


@pytest.mark.parametrize("make, says", [
    (lambda t, s: _out_file(t), "a file, not a folder"),  # refused up front, dry runs too (no_file_for_a_folder)
    (lambda t, s: _records_dir(t, s), "is not a regular file"),
    (lambda t, s: _records_to_null(t, s), "is not a regular file (a link to /dev/null)"),
])
def test_an_out_that_cannot_hold_records_is_refused_before_anything_runs(make, says, tiny_suite, tmp_path,
                                                                         capsys):
    suite = tiny_suite()
    out = make(tmp_path, suite)
    assert main(["--suite", str(suite), "--out", str(out), "--no-progress", "--data-dir",
                 str(tmp_path / "no_data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {out}") and says in err[0], err
    assert not (tmp_path / "checkpoints").exists() and not any(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize("value", ["", "  "])
def test_a_blank_data_folder_variable_is_refused_not_read_as_here(value, tiny_suite, tmp_path, capsys, monkeypatch):
    """``TNBENCH_DATA=`` used to mean the working folder (``Path("")``): neither the default
    ``./data`` nor a folder anyone named. It is an empty value, refused as ``--data-dir ''`` is."""
    monkeypatch.setenv("TNBENCH_DATA", value)
    out = tmp_path / "out"
    assert main(["--suite", str(tiny_suite()), "--out", str(out), "--no-progress", "--no-download"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: TNBENCH_DATA {value!r}: an empty value; give a folder, or unset it for ./data"], err
    assert not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize("mode", [[], ["--dry-run"]])
def test_a_data_folder_variable_naming_a_file_is_refused_by_runs_and_dry_runs(mode, tiny_suite, tmp_path, capsys,
                                                                            monkeypatch):
    """``TNBENCH_DATA=/etc/hosts``: the dry run planned the run, which then refused it."""
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder\n")
    monkeypatch.setenv("TNBENCH_DATA", str(a_file))
    out = tmp_path / "out"
    assert main(["--suite", str(tiny_suite()), "--out", str(out), "--no-progress", "--no-download", *mode]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: TNBENCH_DATA {a_file}: a file, not a folder; give a folder, or unset it for ./data"], err
    assert not out.exists() or not any(out.rglob("*"))


def test_a_record_that_cannot_be_written_stops_the_sweep_in_one_line(tiny_suite, tmp_path, capsys, monkeypatch):
    """A full disk at the first append: exit 2, one line naming the records file and the cause,
    and no record reported as kept (the sweep used to print "1 ok" and exit 0)."""
    import errno
    import os

    import bench.records

    suite = tiny_suite(methods=["dense"], seeds=[0])

    def full(fd, data):  # the records' writer only: claims and checkpoints still land
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bench.records, "write_all", full)
    code = main(["--suite", str(suite), "--out", str(tmp_path / "out"), "--no-progress"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error")]
    assert code == 2
    assert len(err) == 1 and "runs.jsonl" in err[0] and "No space left on device" in err[0], err
    records = tmp_path / "out" / suite.stem / "runs.jsonl"
    assert not records.exists() or records.read_bytes() == b""


@pytest.mark.parametrize("how, code, what", [("ctrl-c", 130, "Ctrl-C"), ("sigterm", 143, "SIGTERM")])
def test_interruptions_end_in_one_line_with_their_exit_code(how, code, what, tiny_suite, tmp_path, capsys,
                                                              monkeypatch):
    """Ctrl-C and SIGTERM while a sweep runs: one line, exit 130 / 143, no traceback, and the
    claim of the running job released (a re-run takes it at once)."""
    import os
    import signal
    import time

    import bench.backends.local as local

    real = local.run_job

    def interrupted(*args, **kwargs):
        if how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this returns
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "run_job", interrupted)
    suite = tiny_suite(methods=["dense"], seeds=[0])
    out = tmp_path / "out"
    assert main(["--suite", str(suite), "--out", str(out), "--no-progress"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("interrupted")] == [
        f"interrupted ({what}): finished records are kept; run the same command again to resume"]
    assert not any("Traceback" in line for line in err)
    claims = out / suite.stem / "runs.claims"
    assert not claims.exists() or not [p for p in claims.iterdir() if not p.name.startswith(".")]
    assert signal.getsignal(signal.SIGTERM) is not None


def test_a_job_past_its_time_limit_is_recorded_failed_and_the_sweep_goes_on(tiny_suite, tmp_path, capsys, svd_plugin):
    """job_time_limit_s: a plugin whose factorize never returns is stopped and recorded failed
    with the reason; the other jobs still run (it used to run until killed)."""
    import time as _time

    from bench.records import read_records

    plugin = svd_plugin("sleepy-svd", slow_factorize(600), imports="import time")
    # the limit leaves the real jobs (well under a second alone) room on a machine busy with other work
    suite = tiny_suite(methods=["dense", "sleepy-svd", "svd"], ratios=[2], job_time_limit_s=15)
    out = tmp_path / "out"
    t0 = _time.perf_counter()
    assert main(["--suite", str(suite), "--out", str(out), "--no-progress", "--plugin", str(plugin)]) == 1
    assert _time.perf_counter() - t0 < 300
    recs = {r["method"]: r for r in read_records(out / suite.stem / "runs.jsonl")}
    assert recs["sleepy-svd"]["status"] == "failed"
    assert "JobTimeout: stopped after the job time limit of 15 s" in recs["sleepy-svd"]["error"]
    assert recs["svd"]["status"] == "ok" and recs["dense"]["status"] == "ok"


def _sweep_errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error")]


def test_a_full_disk_while_writing_a_checkpoint_stops_the_sweep_in_one_line(tiny_suite, tmp_path, capsys,
                                                                             monkeypatch):
    """torch.save on a full disk raises an opaque RuntimeError ('enforce fail at
    inline_container.cc'); the sweep stops with one line naming the checkpoint and a likely full
    disk, no partial checkpoint and no record (it used to fail every job with that text)."""
    import torch as _torch

    suite = tiny_suite(methods=["dense", "svd"], seeds=[0, 1])

    def full(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(_torch, "save", full)
    out = tmp_path / "out"
    assert main(["--suite", str(suite), "--out", str(out), "--no-progress"]) == 2
    err = _sweep_errors(capsys)
    assert len(err) == 1 and ".pt" in err[0] and "probably a full disk" in err[0], err
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.tmp"))
    records = out / suite.stem / "runs.jsonl"
    assert not records.exists() or records.read_bytes() == b""


def test_a_full_disk_while_writing_a_claim_leaves_no_claim_behind(tiny_suite, tmp_path, capsys, monkeypatch):
    """A claim write that makes no progress (ENOSPC): one line, exit 2, and no empty claim file
    that a resume would read as another sweep's (it then exited 0 having done nothing)."""
    import os

    import bench.claims

    suite = tiny_suite(methods=["dense"], seeds=[0])
    real_write = os.write

    def full(fd, data):
        return 0 if bytes(data).startswith(b'{"owner"') else real_write(fd, data)

    monkeypatch.setattr(bench.claims.os, "write", full)
    out = tmp_path / "out"
    assert main(["--suite", str(suite), "--out", str(out), "--no-progress"]) == 2
    err = _sweep_errors(capsys)
    assert len(err) == 1 and "cannot write the claim" in err[0] and "No space left on device" in err[0], err
    claims = out / suite.stem / "runs.claims"
    assert not claims.exists() or not [p for p in claims.iterdir() if not p.name.startswith(".")]
    monkeypatch.setattr(bench.claims.os, "write", real_write)
    assert main(["--suite", str(suite), "--out", str(out), "--no-progress"]) == 0  # the resume runs the job


def test_a_full_disk_while_writing_the_report_keeps_the_records(tiny_suite, tmp_path, capsys, monkeypatch):
    import errno
    import os

    import plots.suite_report
    from bench.records import read_records

    suite = tiny_suite(methods=["dense"], seeds=[0])

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "table.md")
        yield  # a generator, as write_reports is

    monkeypatch.setattr(plots.suite_report, "write_reports", full)
    out = tmp_path / "out"
    assert main(["--suite", str(suite), "--out", str(out), "--no-progress"]) == 2
    err = _sweep_errors(capsys)
    assert len(err) == 1 and "cannot write the report table.md: No space left on device" in err[0], err
    assert [r["status"] for r in read_records(out / suite.stem / "runs.jsonl")] == ["ok"]


def test_checkpoints_follow_the_umask_not_mkstemps_0600(tmp_path):
    import os
    import stat

    from bench.baseline import save_checkpoint

    path = tmp_path / "b.pt"
    save_checkpoint(path, {"w": torch.zeros(2)}, {"acc_test": 1.0})
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(path.with_suffix(".json").stat().st_mode) == 0o666 & ~mask


def test_list_into_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} run_all.py --list | head -1", shell=True, capture_output=True,
                          text=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert proc.stdout.startswith("suites:") and "Traceback" not in proc.stderr, proc.stderr


def test_only_input_errors_exit_2_and_a_bug_keeps_its_traceback(tiny_suite, monkeypatch, capsys):
    """A plain ValueError raised while preparing is a bug of ours, not the user's input: it
    propagates (traceback, exit 1) instead of reading as "error: ..." with exit 2."""
    import bench.cli as cli
    from bench.errors import InputError

    suite = tiny_suite(methods=["dense"])

    def buggy(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(cli, "expand", buggy)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["--suite", str(suite), "--dry-run"])

    class Typo(InputError):
        pass

    def refused(*args, **kwargs):
        raise Typo("seeds: [-1] is not a seed\nsecond line")

    monkeypatch.setattr(cli, "expand", refused)
    assert main(["--suite", str(suite), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: seeds: [-1] is not a seed"


@pytest.mark.parametrize("text, says", [("{not json", "not valid JSON"), ('{"version": 0}', "not a version-")])
def test_a_bad_calibration_file_is_one_line_exit_2(tiny_suite, tmp_path, capsys, text, says):
    cal = _write(tmp_path, "cal.json", text)
    suite = tiny_suite(methods=["dense"])
    assert main(["--suite", str(suite), "--dry-run", "--calibration", str(cal)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error")]) == 1 and says in err[-1], err


@pytest.mark.parametrize("argv, says", [(["--time-budget", "abc"], "argument --time-budget: invalid float value: 'abc'"),
                                        (["--backend", "slurm"], "argument --backend: invalid choice: 'slurm'"),
                                        (["--bogus"], "unrecognized arguments: --bogus")])
def test_a_malformed_command_line_is_one_line_not_the_usage_block(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--suite", "smoke", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {says}"), err


def test_fixed_knobs_of_a_plugin_reading_its_weights_are_left_to_the_run(svd_plugin, tiny_suite, tmp_path, capsys):
    """Validation sizes fixed knobs on the untrained (meta) network; a plugin whose ``knobs``
    reads the weights cannot run there, and is not refused for it (its jobs run as before)."""
    plugin = svd_plugin("svd-reads", "def knobs(self, layer):\n    float(layer.weight.sum())\n"
                                     "    return super().knobs(layer)\n")
    suite = tiny_suite(methods=[{"method": "svd-reads", "knobs": [2]}])
    code = main(["--suite", str(suite), "--plugin", str(plugin), "--out", str(tmp_path / "out"), "--dry-run",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    bad = tiny_suite(methods=[{"method": "svd-reads", "knobs": [0]}])
    assert main(["--suite", str(bad), "--plugin", str(plugin), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "cannot size: CompressionError: svd: rank must be >= 1, got 0" in capsys.readouterr().out
