"""CIFAR loaders on small files in the official pickle format, written here into tmp_path.

The official files hold 10,000 (CIFAR-100 train: 50,000) images each; the tests shrink the
expected counts in the spec so the same checks run on a few images per file."""
import dataclasses
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

import bench.data
from bench.data import cifar

ROWS = 6


@pytest.fixture(autouse=True)
def small_specs(monkeypatch):
    """Shrink the official per-file image counts and forget cached datasets."""
    for name, spec in list(cifar.SPECS.items()):
        monkeypatch.setitem(cifar.SPECS, name, dataclasses.replace(spec, rows={f: ROWS for f in spec.rows}))
    monkeypatch.setattr(bench.data, "_CACHE", {})


def batch_bytes(rng, rows=ROWS, classes=10, label_key=b"labels", extra=None):
    entry = {b"batch_label": b"test batch", b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
             label_key: rng.integers(0, classes, rows).tolist()}
    entry.update(extra or {})
    return pickle.dumps(entry, protocol=2), entry


def write_cifar10(folder, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    entries = {}
    for f in cifar.SPECS["cifar10"].files:
        raw, entries[f] = batch_bytes(rng)
        (folder / f).write_bytes(raw)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x"] * 10}, protocol=2))
    return entries


def write_cifar100(folder, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    entries = {}
    for f in cifar.SPECS["cifar100"].files:
        raw, entries[f] = batch_bytes(rng, classes=100, label_key=b"fine_labels",
                                      extra={b"coarse_labels": rng.integers(0, 20, ROWS).tolist()})
        (folder / f).write_bytes(raw)
    return entries


def test_cifar10_loads_pixels_labels_and_warns_when_unofficial(tmp_path, capsys):
    entries = write_cifar10(tmp_path / "cifar-10-batches-py")
    raw = cifar.load_cifar10(tmp_path, download=False)
    assert raw.x_train.shape == (5 * ROWS, 3, 32, 32) and raw.x_test.shape == (ROWS, 3, 32, 32)
    assert raw.x_train.dtype == torch.float32 and raw.y_train.dtype == torch.int64
    # row layout: 1024 red, then green, then blue values, row-major 32x32
    d = entries["data_batch_2"][b"data"]
    assert torch.equal(raw.x_train[ROWS + 1], torch.from_numpy(d[1].reshape(3, 32, 32)).float() / 255)
    assert raw.x_test[-1, 2, 31, 31].item() == pytest.approx(entries["test_batch"][b"data"][-1, -1] / 255)
    labels = sum((entries[f][b"labels"] for f in cifar.SPECS["cifar10"].files[:5]), [])
    assert raw.y_train.tolist() == labels and raw.y_test.tolist() == entries["test_batch"][b"labels"]
    assert raw.num_classes == 10 and raw.augment == "crop-flip"
    assert raw.mean == (0.4914, 0.4822, 0.4465) and raw.std == (0.2470, 0.2435, 0.2616)
    assert len(raw.warnings) == 1 and "not the official release" in raw.warnings[0]
    assert "data_batch_1" in raw.warnings[0] and "test_batch" in raw.warnings[0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the official release" in err[0]


def test_official_md5s_load_without_warning(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    spec = cifar.SPECS["cifar10"]
    md5 = {f: hashlib.md5((folder / f).read_bytes()).hexdigest() for f in spec.files}
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(
        spec, train=tuple((f, md5[f]) for f, _ in spec.train), test=tuple((f, md5[f]) for f, _ in spec.test)))
    assert cifar.load_cifar10(tmp_path, download=False).warnings == []
    assert capsys.readouterr().err == ""


def test_fingerprint_follows_content_not_path(tmp_path):
    write_cifar10(tmp_path / "a" / "cifar-10-batches-py", seed=0)
    write_cifar10(tmp_path / "b" / "cifar-10-batches-py", seed=1)
    write_cifar10(tmp_path / "c" / "cifar-10-batches-py", seed=0)
    fa, fb, fc = (bench.data.load_splits("cifar10", tmp_path / k, val_fraction=0.2, download=False)
                  for k in "abc")
    assert fa.fingerprint != fb.fingerprint
    assert fa.fingerprint == fc.fingerprint
    assert fa.augment == "crop-flip" and fa.warnings and fa.x_val.shape[0] == 6


def test_folder_itself_may_be_the_data_dir(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    raw = cifar.load_cifar10(tmp_path / "cifar-10-batches-py", download=False)
    assert raw.x_train.shape[0] == 5 * ROWS


def test_cifar100_uses_fine_labels(tmp_path):
    entries = write_cifar100(tmp_path / "cifar-100-python")
    raw = bench.data.load_raw("cifar100", tmp_path, download=False)
    assert raw.num_classes == 100 and raw.x_train.shape == (ROWS, 3, 32, 32)
    assert raw.y_train.tolist() == entries["train"][b"fine_labels"]
    assert raw.y_test.tolist() == entries["test"][b"fine_labels"]
    assert raw.mean == (0.5071, 0.4865, 0.4409)


def test_missing_folder_names_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        cifar.load_cifar10(tmp_path, download=False)
    msg = str(e.value)
    for f in ("data_batch_1", "data_batch_5", "test_batch", "cifar-10-batches-py", "downloading is disabled"):
        assert f in msg
    with pytest.raises(FileNotFoundError, match="train, test in .*cifar-100-python"):
        cifar.load_cifar100(tmp_path, download=False)
    write_cifar10(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py lacks data_batch_4\)"):
        cifar.load_cifar10(tmp_path, download=False)


def test_truncated_file_is_refused_naming_it(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"data_batch_3: not a valid cifar10 batch file \(cannot unpickle"):
        cifar.load_cifar10(tmp_path, download=False)


@pytest.mark.parametrize("change, match", [
    ({b"labels": [0, 1, 2, 3, 4, 10]}, r"labels span \[0, 10\], expected 0\.\.9"),
    ({b"labels": [0, 1, 2]}, "3 labels for 6 images"),
    ({b"data": np.zeros((ROWS, 3000), np.uint8)}, r"uint8 array of shape \(n, 3072\)"),
    ({b"data": np.zeros((ROWS, 3072), np.float32)}, r"uint8 array of shape \(n, 3072\), got float32"),
    ({b"data": np.zeros((ROWS + 1, 3072), np.uint8), b"labels": [0] * (ROWS + 1)}, "7 images, the official file has 6"),
])
def test_malformed_file_is_refused_naming_it(tmp_path, change, match):
    folder = tmp_path / "cifar-10-batches-py"
    entries = write_cifar10(folder)
    entry = {**entries["test_batch"], **change}
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(ValueError, match="test_batch: not a valid cifar10 batch file") as e:
        cifar.load_cifar10(tmp_path, download=False)
    assert e.match(match)


def test_missing_key_and_code_in_pickle_are_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((ROWS, 3072), np.uint8)}))
    with pytest.raises(ValueError, match="data_batch_1.*missing key b'labels'"):
        cifar.load_cifar10(tmp_path, download=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))  # not builtins.print: once ray is imported, print is ray's

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(ValueError, match=r"data_batch_1.*refusing to load global (os|posix)\.system"):
        cifar.load_cifar10(tmp_path, download=False)


def make_archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar100_members(seed=0):
    rng = np.random.default_rng(seed)
    return {f"cifar-100-python/{f}": batch_bytes(rng, classes=100, label_key=b"fine_labels")[0]
            for f in ("train", "test")}


def test_download_verifies_md5_then_extracts(tmp_path, monkeypatch):
    src = tmp_path / "mirror" / "cifar-100-python.tar.gz"
    src.parent.mkdir()
    md5 = make_archive(src, cifar100_members())
    data_dir = tmp_path / "data"
    spec = cifar.SPECS["cifar100"]
    monkeypatch.setitem(cifar.SPECS, "cifar100", dataclasses.replace(spec, url=src.as_uri(), archive_md5="0" * 32))
    with pytest.raises(FileNotFoundError, match="MD5 .* is not the official 0000"):
        cifar.load_cifar100(data_dir, download=True)
    assert not (data_dir / "cifar-100-python").exists() and not (data_dir / spec.archive).exists()

    monkeypatch.setitem(cifar.SPECS, "cifar100", dataclasses.replace(spec, url=src.as_uri(), archive_md5=md5))
    raw = cifar.load_cifar100(data_dir, download=True)
    assert raw.x_train.shape == (ROWS, 3, 32, 32) and raw.num_classes == 100
    assert (data_dir / "cifar-100-python" / "train").is_file() and (data_dir / spec.archive).is_file()


def test_archive_escaping_the_folder_is_refused(tmp_path, monkeypatch):
    members = {**cifar100_members(), "cifar-100-python/../../evil.txt": b"x"}
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    md5 = make_archive(data_dir / "cifar-100-python.tar.gz", members)  # already there: no download
    spec = cifar.SPECS["cifar100"]
    monkeypatch.setitem(cifar.SPECS, "cifar100", dataclasses.replace(spec, archive_md5=md5))
    with pytest.raises(ValueError, match="refusing member .*evil.txt.*leaves"):
        cifar.load_cifar100(data_dir, download=True)
    assert not (tmp_path / "evil.txt").exists() and not (data_dir / "cifar-100-python").exists()


@pytest.mark.slow
def test_real_cifar10_copy_if_present(monkeypatch):
    """The shared rebuilt copy (see ../shared/data/CIFAR10.md): full counts, known stats."""
    import pathlib

    folder = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not (folder / "cifar-10-batches-py").is_dir():
        pytest.skip("no ../shared/data/cifar-10-batches-py here")
    spec = cifar.SPECS["cifar10"]  # the autouse fixture shrank the counts: restore them
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(spec, rows={f: 10000 for f in spec.rows}))
    raw = cifar.load_cifar10(folder, download=False)
    assert raw.x_train.shape == (50000, 3, 32, 32) and raw.x_test.shape == (10000, 3, 32, 32)
    assert torch.bincount(raw.y_train).tolist() == [5000] * 10
    assert raw.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert raw.x_train.mean((0, 2, 3)) == pytest.approx(torch.tensor(raw.mean), abs=1e-3)
    assert raw.warnings  # the rebuilt copy is not byte-identical to the official files


def test_cifar10_suite_runs_on_a_few_hundred_images(tmp_path, monkeypatch):
    """`run_all.py --suite cifar10` with overrides down to a few hundred images and one epoch
    finishes on the CPU and writes records, table and plot (the rows are official-format pickles)."""
    from bench.cli import main
    from bench.records import read_records

    for name, spec in list(cifar.SPECS.items()):
        monkeypatch.setitem(cifar.SPECS, name, dataclasses.replace(spec, rows={f: 60 for f in spec.rows}))
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for f in cifar.SPECS["cifar10"].files:
        (folder / f).write_bytes(batch_bytes(rng, rows=60)[0])
    out = tmp_path / "out"
    args = ["--suite", "cifar10", "--data-dir", tmp_path / "data", "--out", out, "--no-download", "--no-progress",
            "--networks", "alexnet", "--methods", "dense,svd", "--set", "networks={alexnet: [features.14]}",
            "--set", "protocol.seeds=[0]", "--set", "ratios=[8]", "--set", "train.epochs=1", "--set", "finetune.epochs=1",
            "--set", "data.train_subset=200"]
    assert main([str(a) for a in args]) == 0
    recs = read_records(out / "cifar10" / "runs.jsonl")
    assert sorted((r["method"], r["status"]) for r in recs) == [("dense", "ok"), ("svd", "ok")]
    svd = next(r for r in recs if r["method"] == "svd")
    assert svd["achieved_ratio"] == pytest.approx(8, rel=0.1)
    assert svd["data"]["train_subset"] == 200 and svd["data_warnings"] and svd["data_fingerprint"]
    assert "| svd |" in (out / "cifar10" / "table.md").read_text()
    assert (out / "cifar10" / "plots" / "accuracy_vs_params_alexnet_cifar10.png").stat().st_size > 0
