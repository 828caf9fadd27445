"""Carry a resumable study folder from one machine to the next, in git (`runs/` is not committed and a new
session's machine starts without it): `pack` writes what resuming needs into one archive, `unpack` puts it
back with its file times (an evaluation's record must stay newer than its model for the stage to count as
done).

What `pack` keeps: every file but locks (configs, metrics, records, evaluations, logs, checkpoints), less the
checkpoints named by `--without`: RUN/best.pt or RUN/last.pt of finished trainings (RUN: a run folder's name,
in every seed's folder), e.g. `--without standard/last.pt,cifs-nat/best.pt` once every training that starts
from standard has written its own last.pt and no stage evaluates the natural CIFS model. Refused: a
checkpoint of an unfinished training, and a last.pt that a training on disk without its own last.pt starts
from. A warm start whose dependent training has not begun has no config on disk to say so: name its last.pt
only when you know.

usage: python scripts/carry.py pack FOLDER ARCHIVE.tar.gz [--without RUN/FILE.pt,...]
       python scripts/carry.py unpack ARCHIVE.tar.gz FOLDER
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path


class Refused(Exception):
    pass


def _runs(folder: Path) -> dict[Path, dict]:
    """Training run folders (their config.json holds the training config, with a method) and those configs."""
    out = {}
    for cfg in folder.rglob("config.json"):
        try:
            c = json.loads(cfg.read_text())
        except (OSError, ValueError):
            continue
        c = c.get("config") if isinstance(c, dict) else None
        if isinstance(c, dict) and "method" in c:
            out[cfg.parent.resolve()] = c
    return out


def _finished(run: Path) -> bool:
    """Whether the training is done, as a study's training stage decides it (`TrainJob.done`)."""
    from chanscope.workflows.jobs import TrainJob
    from chanscope.workflows.training import load_run_config

    return TrainJob(load_run_config(run), run).done()


def dropped_checkpoints(folder: Path, without: frozenset[str]) -> set[Path]:
    """The checkpoints `--without` names, after checking that resuming does not need them."""
    runs = _runs(folder)
    needed = {Path(c["init"]).resolve() for r, c in runs.items() if c.get("init") and not (r / "last.pt").is_file()}
    drop: set[Path] = set()
    for pattern in without:
        name, _, file = pattern.partition("/")
        if file not in ("best.pt", "last.pt"):
            raise Refused(f"--without {pattern!r}: give RUN/best.pt or RUN/last.pt")
        for run in runs:
            p = run / file
            if run.name != name or not p.is_file():
                continue
            if not _finished(run):
                raise Refused(f"{p.relative_to(folder)} is of an unfinished training: resuming needs it")
            if p.resolve() in needed:
                raise Refused(f"{p.relative_to(folder)}: a training on disk that has not begun starts from it")
            drop.add(p.resolve())
    return drop


def pack(folder: Path, archive: Path, without: frozenset[str] = frozenset()) -> None:
    folder = folder.resolve()
    drop = dropped_checkpoints(folder, without)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".chanscope.lock"
             and p.resolve() not in drop]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    manifest = {"folder": str(folder), "made": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "packed_by_commit": commit, "files": len(files),
                "left_out": sorted(str(p.relative_to(folder)) for p in drop)}
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:  # pax: file times to the sub-second
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("CARRY.json")
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
        for p in files:
            tar.add(p, arcname=str(p.relative_to(folder)), recursive=False)
    tmp.replace(archive)
    n_pt = sum(p.suffix == ".pt" for p in files)
    print(f"{archive}: {len(files)} files ({n_pt} checkpoints, {len(drop)} left out), "
          f"{archive.stat().st_size / 1e6:.1f} MB, from {folder}")


def unpack(archive: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name != "CARRY.json"]
        bad = [m.name for m in members if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in m.name]
        if bad:
            raise Refused(f"{archive} holds {bad[0]!r}, which `carry.py pack` never writes; not unpacked")
        clash = [m.name for m in members if (folder / m.name).exists()]
        if clash:
            raise Refused(f"{folder} already holds {clash[0]} (and {len(clash) - 1} more); unpack into an empty "
                          "folder or move it aside")
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.10.12+, 3.11.4+
        tar.extractall(folder, members=members, **safe)  # keeps the archived file times
        manifest = json.load(tar.extractfile("CARRY.json"))
    print(f"{folder}: {len(members)} files from {archive} (packed {manifest['made']}; the study's records "
          "say which commands made each stage)")


def main(args: list[str]) -> None:
    without: frozenset[str] = frozenset()
    if len(args) == 5 and args[0] == "pack" and args[3] == "--without":
        without, args = frozenset(n for n in args[4].split(",") if n), args[:3]
    if len(args) != 3 or args[0] not in ("pack", "unpack"):
        raise Refused("usage: python scripts/carry.py pack FOLDER ARCHIVE.tar.gz [--without RUN/FILE.pt,...] | "
                      "unpack ARCHIVE.tar.gz FOLDER")
    if args[0] == "pack":
        if not Path(args[1]).is_dir():
            raise Refused(f"{args[1]} is not a folder; name the study folder to pack")
        pack(Path(args[1]), Path(args[2]), without)
    else:
        if not Path(args[1]).is_file():
            raise Refused(f"{args[1]} does not exist; name an archive written by `carry.py pack`")
        unpack(Path(args[1]), Path(args[2]))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
