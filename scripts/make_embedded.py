"""Build chanscope's embedded CIFAR-10 subset from the full JPEG archive.

Why: every command needs real data with no network and no ../shared. This copies the original JPEG
bytes (no re-encoding) of a seeded, class-balanced sample into a small tar.gz inside the package.

Usage: python scripts/make_embedded.py ../shared/data/cifar10-jpeg.tar.gz chanscope/data/assets/cifar10_mini.tar.gz
"""

from __future__ import annotations

import io
import random
import sys
import tarfile
from collections import defaultdict

PER_CLASS = {"train": 500, "test": 100}


def main(src: str, dst: str, seed: int = 0) -> None:
    files: dict[tuple[str, str], list[tarfile.TarInfo]] = defaultdict(list)
    with tarfile.open(src, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        for m in members:
            parts = m.name.split("/")
            split, cls = parts[-3], parts[-2]
            files[(split, cls)].append(m)
        rng = random.Random(seed)
        chosen: list[tarfile.TarInfo] = []
        for (split, _cls), ms in sorted(files.items()):
            ms = sorted(ms, key=lambda m: m.name)
            chosen += sorted(rng.sample(ms, PER_CLASS[split]), key=lambda m: m.name)
        with tarfile.open(dst, "w:gz", compresslevel=9) as out:
            for m in chosen:
                data = tf.extractfile(m).read()
                parts = m.name.split("/")
                info = tarfile.TarInfo("/".join(["cifar10_mini", *parts[-3:]]))
                info.size = len(data)
                info.mtime = 0
                out.addfile(info, io.BytesIO(data))
    print(f"wrote {len(chosen)} images to {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
