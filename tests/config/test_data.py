"""Dataset loading: IDX parsing, checksum of decompressed content, clear errors, splits."""
import gzip
from pathlib import Path
import hashlib

import numpy as np
import pytest
import torch

from bench.data import load_splits
from bench.data import idx
from tests.conftest import SHARED_DATA, mnist_available


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx_roundtrip():
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert (idx.parse_idx(_idx_bytes(a)) == a).all()


def test_parse_idx_rejects_truncated():
    a = np.zeros((5, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="payload"):
        idx.parse_idx(_idx_bytes(a)[:-3])


def test_missing_files_name_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz.*downloading is disabled"):
        load_splits("mnist", tmp_path, download=False)


def test_wrong_content_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for stem in idx.FILES:
        (folder / f"{stem}.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros((2, 2), dtype=np.uint8))))
    with pytest.raises(ValueError, match="not the official"):
        idx._load("mnist", tmp_path, download=False)


def test_checksum_is_of_decompressed_content(tmp_path, monkeypatch):
    """A copy recompressed differently (or not compressed) is accepted when its content matches."""
    arrays = {"train-images-idx3-ubyte": np.random.randint(0, 255, (6, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(6) % 10,
              "t10k-images-idx3-ubyte": np.random.randint(0, 255, (2, 28, 28)),
              "t10k-labels-idx1-ubyte": np.array([3, 4])}
    folder = tmp_path / "mnist"
    folder.mkdir()
    md5s = []
    for i, (stem, a) in enumerate(arrays.items()):
        raw = _idx_bytes(a)
        md5s.append(hashlib.md5(raw).hexdigest())
        (folder / (f"{stem}.gz" if i % 2 else stem)).write_bytes(gzip.compress(raw, 1) if i % 2 else raw)
    monkeypatch.setitem(idx.SPECS["mnist"], "md5", tuple(md5s))
    raw = idx._load("mnist", tmp_path, download=False)
    assert raw.x_train.shape == (6, 1, 28, 28) and raw.y_test.tolist() == [3, 4]


def test_digits_splits_are_disjoint_and_deterministic():
    a = load_splits("digits", val_fraction=0.2)
    b = load_splits("digits", val_fraction=0.2)
    assert a.fingerprint == b.fingerprint
    assert len(a.y_train) + len(a.y_val) == 1797 - len(a.y_test)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    sub = load_splits("digits", val_fraction=0.2, train_subset=100)
    assert len(sub.y_train) == 100 and torch.equal(sub.x_val, a.x_val) and sub.fingerprint != a.fingerprint


@pytest.mark.skipif(not mnist_available(), reason="real MNIST not in the data directory")
def test_real_mnist_matches_published_statistics():
    d = load_splits("mnist", SHARED_DATA, val_fraction=0.1, download=False)
    assert d.x_train.shape == (54000, 1, 28, 28) and d.x_val.shape[0] == 6000
    assert d.x_test.shape == (10000, 1, 28, 28)
    counts = torch.bincount(torch.cat([d.y_train, d.y_val]), minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.skipif(not mnist_available(), reason="real MNIST not in the data directory")
def test_copy_without_gzip_layer_loads(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for stem in idx.FILES:
        (folder / stem).write_bytes(gzip.decompress((SHARED_DATA / "MNIST" / "raw" / f"{stem}.gz").read_bytes()))
    raw = idx._load("mnist", tmp_path, download=False)
    assert raw.x_test.shape == (10000, 1, 28, 28)


# --- verify: damaged files are refused up front, naming the file and why ------------------------
def _mnist_folder(tmp_path, first: bytes):
    """MNIST/raw with ``first`` as the train images and small well-formed other files."""
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for i, stem in enumerate(idx.FILES):
        (folder / f"{stem}.gz").write_bytes(first if i == 0 else gzip.compress(_idx_bytes(np.zeros(2))))
    return folder / f"{idx.FILES[0]}.gz"


@pytest.mark.parametrize("content, why", [
    (gzip.compress(_idx_bytes(np.ones((6, 28, 28))))[:-12], "truncated or corrupt gzip"),
    (b"\x1f\x8b" + b"not gzip at all", "truncated or corrupt gzip"),
    (gzip.compress(b"\x00\x00\x0d\x03" + bytes(20)), "bad magic 0x00000d03"),
    (gzip.compress(_idx_bytes(np.ones((6, 28, 28)))[:-5]), "wrong size: IDX payload has 4,699 bytes, header says 6 x 28 x 28 = 4,704"),
    (gzip.compress(b"\x00\x00\x08\x03\x00"), "wrong size: 5 bytes, shorter than the header"),
    (gzip.compress(_idx_bytes(np.ones((6, 28, 28)))), "checksum mismatch: decompressed MD5"),
])
def test_verify_names_the_damaged_file_and_why(tmp_path, content, why):
    from bench.data.download import DataFileError

    path = _mnist_folder(tmp_path, content)
    for check in (lambda: idx.verify("mnist", tmp_path), lambda: idx.verify("mnist", tmp_path, download=True),
                  lambda: idx._load("mnist", tmp_path, download=False)):
        with pytest.raises(DataFileError) as e:
            check()
        assert str(e.value).startswith(f"{path}: ") and why in str(e.value) and "\n" not in str(e.value)


def test_verify_of_missing_files_depends_on_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz.*downloading is disabled"):
        idx.verify("mnist", tmp_path, download=False)
    idx.verify("fashion-mnist", tmp_path, download=True)  # fetched (and checked) when loading


def test_verify_cifar_names_a_garbage_or_truncated_file(tmp_path):
    from bench.data import cifar
    from bench.data.download import DataFileError

    spec = cifar.SPECS["cifar10"]
    folder = tmp_path / spec.folder
    folder.mkdir()
    for f in spec.files:
        (folder / f).write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataFileError, match=r"data_batch_1: not a valid cifar10 batch file \(cannot unpickle"):
        cifar.verify("cifar10", tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="cifar-100-python.*downloading is disabled"):
        cifar.verify("cifar100", tmp_path, download=False)


def test_verify_cifar_checks_a_local_archive_it_would_extract(tmp_path):
    from bench.data import cifar
    from bench.data.download import DataFileError

    archive = tmp_path / cifar.SPECS["cifar100"].archive
    archive.write_bytes(gzip.compress(b"not a tar")[:10])
    with pytest.raises(DataFileError, match=f"{archive}: checksum mismatch: MD5"):
        cifar.verify("cifar100", tmp_path, download=True)
    cifar.verify("cifar10", tmp_path, download=True)  # nothing there: downloaded when loading


def test_truncated_archive_is_named_when_extracting(tmp_path):
    from bench.data import cifar
    from bench.data.download import DataFileError

    import io
    import tarfile

    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-python/train")
        payload = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    archive.write_bytes(archive.read_bytes()[:8000])
    with pytest.raises(DataFileError, match=f"{archive}: truncated or corrupt archive"):
        cifar._safe_extract(archive, tmp_path / "out")


@pytest.mark.skipif(not mnist_available(), reason="real MNIST not in the data directory")
def test_verify_accepts_the_real_mnist():
    idx.verify("mnist", SHARED_DATA, download=False)


def test_missing_files_are_fetched_up_front_and_a_failed_download_fails_once(tmp_path, monkeypatch):
    """With downloads allowed, verify_dataset fetches missing files before any job runs, so a
    machine without internet gets one FileNotFoundError naming the files, not a failed record
    per job."""
    from bench.data import verify_dataset

    calls = []

    def offline(urls, path, check):
        calls.append(urls)
        raise RuntimeError(f"could not download {path.name}: no network")

    monkeypatch.setitem(idx.SPECS["fashion-mnist"], "system_dirs", [])
    monkeypatch.setattr(idx, "download", offline)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz.*could not download"):
        verify_dataset("fashion-mnist", tmp_path, download=True)
    assert len(calls) == 1  # it stops at the first file that cannot be fetched


FASHION_SYSTEM = Path(idx.SPECS["fashion-mnist"]["system_dirs"][0])


@pytest.mark.skipif(not (FASHION_SYSTEM / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Fashion-MNIST Debian package (dataset-fashion-mnist) not installed")
def test_real_fashion_mnist_from_the_debian_package_passes_its_checksums(tmp_path):
    """The package's files are the official ones (MD5-checked on load): 6,000 train and 1,000
    test images a class, found without a data directory."""
    idx.verify("fashion-mnist", tmp_path, download=False)
    d = load_splits("fashion-mnist", tmp_path, val_fraction=0.1, download=False)
    assert d.x_train.shape == (54000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(torch.cat([d.y_train, d.y_val])).tolist() == [6000] * 10
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
