"""Dataset sources: official layouts, checksums, clear missing/corrupt messages, splits, caching."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from rayclf.config import DataConfig
from rayclf.data import sources
from rayclf.data.sources import DataError, load_dataset, stratified_split

from .conftest import MINI_CIFAR, write_cifar, write_png_tree


def test_cifar10_official_folder_is_used_as_is(tmp_path):
    write_cifar(tmp_path, n_train=50, n_test=20)
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.2, download=False))
    assert ds.train.x.dtype == np.uint8 and ds.train.x.shape[1:] == (3, 32, 32)
    assert len(ds.train) + len(ds.val) == 50 and len(ds.test) == 20
    assert ds.classes[:2] == ["c0", "c1"] and ds.train.y.dtype == np.int64


def test_cifar100_layout(tmp_path):
    write_cifar(tmp_path, n_train=40, n_test=10, classes=100, hundred=True)
    ds = load_dataset(DataConfig(name="cifar100", root=str(tmp_path), val_fraction=0.0, download=False))
    assert len(ds.train) == 40 and ds.num_classes == 100 and ds.val is None


def test_missing_batch_file_is_named(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing file .*data_batch_3.*cifar-10-python.tar.gz"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))


def test_corrupt_batch_file_is_named(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"test_batch is corrupt"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))


def test_offline_without_data_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and str(tmp_path) in msg and "cifar-10-batches-py" in msg


def test_archive_with_wrong_checksum_is_rejected(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"truncated download")
    with pytest.raises(DataError, match=r"md5 is not the official c58f30108f718f92721af3b95e74349a"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


def test_archive_with_right_checksum_is_extracted(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar(src)
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from torchvision.datasets.utils import calculate_md5

    fake = sources.Archive(sources.CIFAR10.url, sources.CIFAR10.filename, calculate_md5(str(archive)))
    monkeypatch.setattr(sources, "CIFAR10", fake)
    ds = load_dataset(DataConfig(name="cifar10", root=str(archive.parent), val_fraction=0.0))
    assert len(ds.train) == 50


def test_download_failure_is_a_clear_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    with pytest.raises(DataError, match=r"could not download .*offline.*cifar-10-python.tar.gz"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


def test_cinic10_decoded_once_and_uses_official_valid(tmp_path, monkeypatch):
    base = tmp_path / "cinic-10"
    for split, n in (("train", 3), ("valid", 2), ("test", 2)):
        write_png_tree(base / split, sources.CINIC_CLASSES, n)
    ds = load_dataset(DataConfig(name="cinic10", root=str(tmp_path)))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 20, 20)
    assert (base / "cache" / "train.npz").is_file()

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(sources, "read_image", no_decoding)
    again = load_dataset(DataConfig(name="cinic10", root=str(tmp_path)))
    np.testing.assert_array_equal(again.train.x, ds.train.x)


def test_imagefolder_flat_tree_and_resize(tmp_path):
    write_png_tree(tmp_path / "tree", ["cat", "dog"], 10, size=40)
    ds = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "tree"), image_size=32, val_fraction=0.25))
    assert ds.classes == ["cat", "dog"] and ds.shape == (3, 32, 32)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 20


def test_imagefolder_empty_is_clear(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "empty")))


def test_synthetic_is_deterministic_and_sized():
    cfg = DataConfig(name="synthetic", synthetic={"num_train": 100, "num_test": 30, "num_classes": 5,
                                                  "image_size": 16})
    a, b = load_dataset(cfg), load_dataset(cfg)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert a.shape == (3, 16, 16) and a.num_classes == 5 and len(a.test) == 30


def test_stratified_split_keeps_class_shares():
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    keep, held = stratified_split(y, 0.2, seed=3)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(y)
    assert np.bincount(y[held]).tolist() == [20, 10, 6, 4]
    assert stratified_split(y, 0.2, seed=3)[1].tolist() == held.tolist()


@pytest.mark.skipif(not MINI_CIFAR.is_dir(), reason="cifar10-mini folder not present")
def test_real_cifar10_mini_loads():
    ds = load_dataset(DataConfig(name="cifar10", root=str(MINI_CIFAR), val_fraction=0.1, download=False))
    assert len(ds.train) + len(ds.val) == 3730 and len(ds.test) == 930
    assert ds.classes[0] == "airplane"
    assert 0.4 < ds.mean[0] < 0.6


def test_trials_starting_at_once_on_a_cold_node_download_and_extract_once(tmp_path, monkeypatch):
    """Four trials load CIFAR-10 at the same moment on a node that has nothing: the archive, served by a
    local stub that counts requests, is fetched once and extracted once; every trial gets the full data."""
    import http.server
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from torchvision.datasets.utils import calculate_md5

    src = tmp_path / "src"
    write_cifar(src, n_train=100, n_test=20)
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    requests: list[str] = []

    class Counting(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    monkeypatch.setattr(sources, "CIFAR10", sources.Archive(url, "cifar-10-python.tar.gz",
                                                            calculate_md5(str(served / "cifar-10-python.tar.gz"))))
    import rayclf.data.prepare as prepare

    extracted: list[str] = []
    real_extract = prepare._extract
    monkeypatch.setattr(prepare, "_extract", lambda *a: (extracted.append(a[3]), real_extract(*a)))
    try:  # what one download costs the server (torchvision asks once for redirects, then fetches)
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "warm-up"), val_fraction=0.0))
        one_download, extracted[:] = list(requests), []
        requests.clear()
        root = tmp_path / "node"
        with ThreadPoolExecutor(4) as pool:
            sets = list(pool.map(lambda _: load_dataset(DataConfig(name="cifar10", root=str(root),
                                                                   val_fraction=0.0)), range(4)))
    finally:
        server.shutdown()
    assert requests == one_download and extracted == ["cifar-10-batches-py"]
    assert all(len(ds.train) == 100 and len(ds.test) == 20 for ds in sets)
    assert not [p for p in root.iterdir() if p.name.endswith(".partial")]  # nothing half-done left behind
