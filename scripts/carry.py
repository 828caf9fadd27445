"""Carry a resumable study folder from one machine to the next, in git (`runs/` is not committed and a new
session's machine starts without it): `pack` writes what resuming needs into one archive, `unpack` puts it
back with its file times (an evaluation's record must stay newer than its model for the stage to count as
done).

What `pack` keeps: every file but checkpoints and locks (configs, metrics, records, evaluations, logs); of
checkpoints, an unfinished training's last.pt and best.pt, a finished training's best.pt, and a finished
training's last.pt only while a training that starts from it (`init`) has not written its own last.pt.

usage: python scripts/carry.py pack FOLDER ARCHIVE.tar.gz [--no-best NAME,...]
       python scripts/carry.py unpack ARCHIVE.tar.gz FOLDER
--no-best: finished runs of these names (e.g. standard,cifs-nat: warm starts no later stage evaluates) are
carried without best.pt.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path


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


def kept_checkpoints(folder: Path, no_best: frozenset[str] = frozenset()) -> set[Path]:
    runs = _runs(folder)
    keep: set[Path] = set()
    for run, cfg in runs.items():
        finished = (run / "summary.json").is_file()
        if not finished:
            keep |= {run / "best.pt", run / "last.pt"}
        elif run.name not in no_best:
            keep.add(run / "best.pt")
        init = cfg.get("init")
        if init and not (run / "last.pt").is_file():  # it has not started: it needs the checkpoint it starts from
            keep.add(Path(init).resolve())
    return {p for p in keep if p.is_file()}


def pack(folder: Path, archive: Path, no_best: frozenset[str] = frozenset()) -> None:
    folder = folder.resolve()
    keep = kept_checkpoints(folder, no_best)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".chanscope.lock"
             and (p.suffix != ".pt" or p.resolve() in keep)]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    manifest = {"folder": str(folder), "made": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "commit": commit, "files": len(files), "checkpoints": sorted(str(p.relative_to(folder)) for p in keep)}
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("CARRY.json")
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
        for p in files:
            tar.add(p, arcname=str(p.relative_to(folder)), recursive=False)
    tmp.replace(archive)
    size = archive.stat().st_size / 1e6
    print(f"{archive}: {len(files)} files ({len(keep)} checkpoints), {size:.1f} MB, from {folder}")


def unpack(archive: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name != "CARRY.json"]
        clash = [m.name for m in members if (folder / m.name).exists()]
        if clash:
            _refuse(f"{folder} already holds {clash[0]} (and {len(clash) - 1} more); unpack into an empty "
                    "folder or move it aside")
        tar.extractall(folder, members=members, filter="data")  # keeps the archived file times
        manifest = json.load(tar.extractfile("CARRY.json"))
    print(f"{folder}: {len(members)} files from {archive} (packed {manifest['made']} at commit "
          f"{manifest['commit'][:8]}; resume with that commit's code where stage commands changed since)")


def _refuse(line: str) -> None:
    print(f"error: {line}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    args = sys.argv[1:]
    no_best = frozenset()
    if len(args) == 5 and args[0] == "pack" and args[3] == "--no-best":
        no_best, args = frozenset(n for n in args[4].split(",") if n), args[:3]
    if len(args) != 3 or args[0] not in ("pack", "unpack"):
        _refuse("usage: python scripts/carry.py pack FOLDER ARCHIVE.tar.gz [--no-best NAME,...] | "
                "unpack ARCHIVE.tar.gz FOLDER")
    if args[0] == "pack" and not Path(args[1]).is_dir():
        _refuse(f"{args[1]} is not a folder; name the study folder to pack")
    if args[0] == "unpack" and not Path(args[1]).is_file():
        _refuse(f"{args[1]} does not exist; name an archive written by `carry.py pack`")
    if args[0] == "pack":
        pack(Path(args[1]), Path(args[2]), no_best)
    else:
        unpack(Path(args[1]), Path(args[2]))
