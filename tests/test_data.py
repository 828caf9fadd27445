from __future__ import annotations

import io
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from PIL import Image

from chanscope.data import BatchLoader, augment_crop_flip, balanced_subset, load_data
from chanscope.errors import ChanscopeError


def test_embedded_is_real_balanced_cifar(embedded):
    assert embedded.x_train.dtype == torch.uint8 and embedded.x_train.shape == (5000, 3, 32, 32)
    assert embedded.x_test.shape == (1000, 3, 32, 32)
    assert embedded.classes[:3] == ["airplane", "automobile", "bird"] and embedded.num_classes == 10
    assert torch.bincount(embedded.y_train).tolist() == [500] * 10
    assert torch.bincount(embedded.y_test).tolist() == [100] * 10
    # real photos, not constant or noise: plenty of distinct values, neighbour pixels correlated
    x = embedded.x_test[:50].float()
    assert len(torch.unique(x)) > 200
    corr = np.corrcoef(x[..., :-1].flatten(), x[..., 1:].flatten())[0, 1]
    assert corr > 0.8


def test_subset_is_balanced_and_seeded(embedded):
    a = balanced_subset(embedded.y_train, 300, 10, seed=1)
    b = balanced_subset(embedded.y_train, 300, 10, seed=1)
    c = balanced_subset(embedded.y_train, 300, 10, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(embedded.y_train[a]).tolist() == [30] * 10
    with pytest.raises(ChanscopeError, match="at most 5000"):
        balanced_subset(embedded.y_train, 6000, 10, seed=0)


def _write_tree(root, data, per_class=3):
    for split, xs, ys in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        for c, name in enumerate(data.classes[:3]):
            d = root / split / name
            d.mkdir(parents=True)
            for i, idx in enumerate(torch.nonzero(ys == c).flatten()[:per_class]):
                Image.fromarray(xs[idx].permute(1, 2, 0).numpy()).save(d / f"{i}.png")


def test_imagefolder_folder_tar_and_zip_agree(tmp_path, embedded):
    tree = tmp_path / "mydata"
    _write_tree(tree, embedded)
    from_dir = load_data(str(tree))
    assert from_dir.classes == embedded.classes[:3] and from_dir.x_train.shape == (9, 3, 32, 32)
    # PNG is lossless: pixels equal the source images
    assert torch.equal(from_dir.x_train[0], embedded.x_train[torch.nonzero(embedded.y_train == 0)[0, 0]])
    tgz = tmp_path / "mydata.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tree, arcname="nested/mydata")
    zp = tmp_path / "mydata.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for p in tree.rglob("*.png"):
            zf.write(p, p.relative_to(tmp_path))
    for other in (load_data(str(tgz)), load_data(str(zp))):
        assert torch.equal(other.x_train, from_dir.x_train) and torch.equal(other.y_test, from_dir.y_test)


def test_archive_cache_is_exact_and_follows_the_archive(tmp_path, embedded, monkeypatch):
    import os

    from chanscope.data.sources import cache_dir

    monkeypatch.setenv("CHANSCOPE_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "t"
    _write_tree(tree, embedded, per_class=2)
    tgz = tmp_path / "t.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tree, arcname="t")
    first = load_data(str(tgz))
    files = list((cache_dir() / "decoded").glob("*.pt"))
    assert len(files) == 1
    again = load_data(str(tgz))  # from the cache
    assert torch.equal(again.x_train, first.x_train) and torch.equal(again.y_test, first.y_test)
    assert again.classes == first.classes and again.augment == first.augment
    files[0].write_bytes(b"corrupt")  # a broken cache file is decoded again, not an error
    assert torch.equal(load_data(str(tgz)).x_test, first.x_test)
    # a changed archive (another size and time) is decoded again, not served stale
    for split in ("train", "test"):
        shutil.rmtree(tree / split / embedded.classes[0])
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tree, arcname="t")
    os.utime(tgz, ns=(1, 1))
    changed = load_data(str(tgz))
    assert changed.classes == embedded.classes[1:3] and len(changed.y_train) == 4
    # its new entry replaced the stale one (one entry per archive), and is what the next load reads
    assert len(list((cache_dir() / "decoded").glob("*.pt"))) == 1
    assert torch.equal(load_data(str(tgz)).x_train, changed.x_train)
    # another archive (here a copy at another path) keeps its own entry beside it
    copy = tmp_path / "copy.tar.gz"
    shutil.copy2(tgz, copy)
    assert torch.equal(load_data(str(copy)).x_train, changed.x_train)
    assert len(list((cache_dir() / "decoded").glob("*.pt"))) == 2
    monkeypatch.setenv("CHANSCOPE_CACHE", "off")
    assert cache_dir() is None and torch.equal(load_data(str(tgz)).x_train, changed.x_train)


def test_bad_sources_give_clear_errors(tmp_path):
    with pytest.raises(ChanscopeError, match="neither a known source"):
        load_data(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChanscopeError, match="empty"):
        load_data(str(tmp_path / "empty"))
    flat = tmp_path / "flat.tar.gz"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    with tarfile.open(flat, "w:gz") as tf:
        info = tarfile.TarInfo("images/a.png")
        info.size = len(buf.getvalue())
        tf.addfile(info, io.BytesIO(buf.getvalue()))
    with pytest.raises(ChanscopeError, match="train/<class>"):
        load_data(str(flat))
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not an archive")
    with pytest.raises(ChanscopeError, match="cannot read archive"):
        load_data(str(junk))
    with pytest.raises(ChanscopeError, match="`data_root`"):
        load_data("cifar10")
    with pytest.raises(ChanscopeError, match="does not exist"):
        load_data("cifar10", root=tmp_path / "missing")


def test_fashion_mnist_from_original_idx_files(tmp_path):
    shutil.copytree(FIXTURES / "FashionMNIST", tmp_path / "FashionMNIST")  # only the .gz files
    data = load_data("fashion-mnist", root=tmp_path)
    assert data.x_train.shape == (200, 1, 28, 28) and data.x_test.shape == (100, 1, 28, 28)
    assert data.channels == 1 and data.classes[0] == "T-shirt/top" and not data.augment
    # first training label of Fashion-MNIST is 9 (ankle boot), first test label 9 as well
    assert int(data.y_train[0]) == 9 and int(data.y_test[0]) == 9


def test_svhn_mat_format(tmp_path, embedded):
    scipy_io = pytest.importorskip("scipy.io")
    d = tmp_path / "svhn"
    d.mkdir()
    for split, xs, ys in (("train", embedded.x_train[:40], embedded.y_train[:40]),
                          ("test", embedded.x_test[:20], embedded.y_test[:20])):
        lab = ys.numpy().copy()
        lab[lab == 0] = 10  # SVHN stores digit 0 as label 10
        scipy_io.savemat(d / f"{split}_32x32.mat", {"X": xs.permute(2, 3, 1, 0).numpy(),
                                                    "y": lab.reshape(-1, 1).astype(np.uint8)})
    # torchvision checks the official MD5s; the loader must say so clearly, then read files we allow
    with pytest.raises(ChanscopeError, match="svhn"):
        load_data("svhn", root=d)
    import torchvision.datasets as tvd

    orig = tvd.SVHN._check_integrity
    try:
        tvd.SVHN._check_integrity = lambda self: True
        data = load_data("svhn", root=d)
    finally:
        tvd.SVHN._check_integrity = orig
    assert torch.equal(data.x_train, embedded.x_train[:40]) and torch.equal(data.y_test, embedded.y_test[:20])
    assert data.classes == [str(i) for i in range(10)] and not data.augment


def test_crop_flip_keeps_content():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = augment_crop_flip(x, g, pad=2)
    assert out.shape == x.shape
    for i in range(2):  # each output is a shifted (and maybe flipped) window of the zero-padded input
        xp = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        hits = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                if torch.equal(out[i], (xp[:, dy:dy + 8, dx:dx + 8].flip(2) if f else xp[:, dy:dy + 8, dx:dx + 8]))]
        assert hits


def test_loader_resume_mid_epoch_gives_same_batches(embedded):
    def make():
        return BatchLoader(embedded.x_test, embedded.y_test, 64, shuffle=True, augment=True, seed=3)

    full = [(x.clone(), y.clone()) for x, y in make()]
    a = make()
    it = iter(a)
    first = [next(it) for _ in range(5)]
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in a.state_dict().items()}
    b = make()
    b.load_state_dict(state)
    rest = list(b)
    got = first + rest
    assert len(got) == len(full) == 16
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(got, full))
    xb, _ = full[0]
    assert xb.dtype == torch.float32 and 0 <= xb.min() and xb.max() <= 1
