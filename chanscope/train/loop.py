"""`chanscope train`: one loop for every method, resumable to the batch.

Reads top to bottom: setup (data, model, optimiser), the method as a `batch_loss` picked by name,
one epoch, per-epoch evaluation, checkpoints. Printing is the caller's business (callbacks).
"""

from __future__ import annotations

import json
import math
import platform
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from chanscope import distributed as dist_util
from chanscope.analysis import percent
from chanscope.attacks.fold import folded
from chanscope.attacks.graphed import graphed_pgd
from chanscope.attacks.pgd import attack_loss, frozen_eval, pgd
from chanscope.attacks.suite import correct
from chanscope.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from chanscope.cpu_alloc import current_cpu_alloc
from chanscope.data import BatchLoader, ImageData, balanced_subset, load_data
from chanscope.errors import ChanscopeError
from chanscope.io import atomic_write_csv, atomic_write_json
from chanscope.losses import joint_ce, trades_kl
from chanscope.models import CifarResNet, create_model
from chanscope.models.layout import resolve_layout
from chanscope.train.config import TrainConfig

__all__ = ["train", "TrainResult", "TrainInterrupted", "evaluate_subset", "versions", "METRIC_COLUMNS",
           "random_control"]

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_nat_acc", "val_pgd_acc", "test_nat_acc",
                  "test_pgd_acc", "train_eval_nat_acc", "train_eval_pgd_acc", "seconds"]


class TrainInterrupted(Exception):
    """Raised after Ctrl-C once the state has been saved; `--resume` continues from it."""


@dataclass
class TrainResult:
    out: Path
    metrics: pd.DataFrame
    best_epoch: int
    best_metric: float
    config: TrainConfig
    seconds: float


def versions() -> dict[str, str]:
    import torchvision

    from chanscope import __version__

    return {"chanscope": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


# ------------------------------------------------------------------------------------------ the methods
def batch_loss(cfg: TrainConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               autocast: Callable[[], Any], update_model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss to minimise and the logits it came from, for one batch, by method.

    Adversarial examples are crafted in eval mode with frozen parameters (as the official code) on
    `model`; the update's forward runs in train mode through `update_model` (the DDP wrapper, if any).
    """
    net = model if update_model is None else update_model  # a compiled module has no truth value
    selects = cfg.feature_select != "none"
    fold = cfg.adversarial and cfg.fold_bn and not cfg.compile  # the attack sees eval-mode BN: fold it once
    graphs = cfg.adversarial and cfg.cuda_graphs and x.is_cuda and cfg.loss != "trades" and not cfg.compile
    with folded(model, keep=graphs) if fold else nullcontext(model) as atk:
        if cfg.adversarial and cfg.loss == "trades":
            with torch.no_grad(), frozen_eval(atk), autocast():
                nat_logits = atk(x).float()
            start = x + 0.001 * torch.randn_like(x)
            x_in = pgd(atk, x, y, eps=cfg.eps, alpha=cfg.step_size, steps=cfg.steps,
                       loss=attack_loss("trades", x_nat_logits=nat_logits), init=start, autocast=autocast)
        elif graphs:
            x_in = graphed_pgd(atk, x, y, eps=cfg.eps, alpha=cfg.step_size, steps=cfg.steps,
                               loss="joint" if selects else "ce", beta=cfg.beta_atk, random_start=cfg.random_start,
                               bf16=cfg.uses_bf16(x.device.type))
        elif cfg.adversarial:
            x_in = pgd(atk, x, y, eps=cfg.eps, alpha=cfg.step_size, steps=cfg.steps,
                       loss="joint" if selects else "ce", beta=cfg.beta_atk, random_start=cfg.random_start,
                       autocast=autocast)
        else:
            x_in = x
    if cfg.adversarial and cfg.loss == "trades":
        with autocast():
            logits_nat = net(x, y)
            logits_adv = net(x_in, y)
            loss = F.cross_entropy(logits_nat, y) + cfg.trades_beta * trades_kl(logits_adv, logits_nat).mean()
        return loss, logits_adv
    with autocast():
        if selects:
            logits, aux = net(x_in, y, return_aux=True)
            loss = joint_ce(logits.float(), [a.float() for a in aux], y, cfg.beta)
        else:
            logits = net(x_in, y)
            loss = F.cross_entropy(logits.float(), y)
    return loss, logits


# ------------------------------------------------------------------------------------------- evaluation
def evaluate_subset(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                    batch_size: int = 250) -> tuple[float, float]:
    """Natural and PGD accuracy (%) on a fixed set: PGD on the joint loss for CIFS/CAS models."""
    loss = "joint" if cfg.feature_select != "none" else "ce"
    total = len(y)
    part = dist_util.shard(total)
    x, y = x[part], y[part]
    nat = adv = 0
    with frozen_eval(model):
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            nat += correct(model, xb, yb).sum().item()
            xa = pgd(model, xb, yb, eps=cfg.eps, alpha=cfg.eval_step_size, steps=cfg.eval_steps,
                     loss=loss, beta=cfg.beta_atk, random_start=False)
            adv += correct(model, xa, yb).sum().item()
    counts = torch.tensor([nat, adv], dtype=torch.float64)
    dist_util.all_reduce_sum([counts])
    n = max(1, total)
    return percent(int(counts[0]), n), percent(int(counts[1]), n)


# ----------------------------------------------------------------------------------------------- Ctrl-C
@contextmanager
def _sigint_flag() -> Iterator[dict[str, bool]]:
    """Turn the first Ctrl-C into a flag checked between batches, so state is saved consistently."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):  # noqa: ARG001
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


# ------------------------------------------------------------------------------------------------ train
def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


@dataclass
class Split:
    """The held-out validation images carved from the training set, and how to find them again."""

    x: torch.Tensor
    y: torch.Tensor
    record: dict[str, Any]


def carve_validation(data: ImageData, n: int, seed: int) -> Split:
    """Take n class-balanced seeded images out of data's training set (in place) and return them."""
    import hashlib

    if n == 0:
        return Split(data.x_train[:0], data.y_train[:0], {"n": 0})
    if n > len(data.y_train) // 2:
        raise ChanscopeError(f"val_n={n} would take over half of the {len(data.y_train)} training images; "
                             "use a smaller validation split")
    idx = balanced_subset(data.y_train, n, data.num_classes, seed)
    keep = torch.ones(len(data.y_train), dtype=torch.bool)
    keep[idx] = False
    split = Split(data.x_train[idx], data.y_train[idx],
                  {"n": len(idx), "seed": seed, "from": "training set, before the subset",
                   "indices_sha256": hashlib.sha256(idx.numpy().tobytes()).hexdigest()})
    data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]
    data.notes.append(f"validation split of {len(idx)} training images held out (seed {seed})")
    return split


def prepare_data(cfg: TrainConfig) -> tuple[ImageData, Split]:
    data = load_data(cfg.data, cfg.data_root, cfg.download, subset=None, seed=cfg.seed)
    val = carve_validation(data, cfg.val_n, cfg.seed)
    if cfg.subset is not None:
        n = cfg.subset
        if cfg.preset and n >= len(data.y_train):  # a preset's subset never exceeds the data
            n = None
        if n is not None:
            idx = balanced_subset(data.y_train, n, data.num_classes, cfg.seed)
            data.x_train, data.y_train = data.x_train[idx], data.y_train[idx]
            data.notes.append(f"class-balanced training subset of {len(idx)} (seed {cfg.seed})")
    return data, val


def build_model(cfg: TrainConfig, data: ImageData) -> nn.Module:
    mean, std = data.channel_stats()
    return create_model(cfg.arch, num_classes=data.num_classes, in_channels=data.channels, mean=mean, std=std,
                        **cfg.model_kwargs())


def _load_init(model: nn.Module, path: str) -> None:
    src = model_from_checkpoint(read_checkpoint(path), path)
    own, other = model.state_dict(), src.state_dict()
    bad = [k for k in own if k not in other or other[k].shape != own[k].shape]
    if bad or set(other) - set(own):
        raise ChanscopeError(f"--init {path}: arch or class-count mismatch ({getattr(src, 'arch', '?')} "
                             f"{getattr(src, 'model_kwargs', {})}; first differing key {(bad or ['?'])[0]}); "
                             "give a checkpoint of the same arch, width, method and data")
    model.load_state_dict(other)


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False, stop_after: int | None = None,
          on_batch: Callable[[int, int, int, float], None] | None = None,
          on_epoch: Callable[[dict[str, float]], None] | None = None,
          on_start: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a model by `cfg` into run folder `out` (config.json, metrics.csv, last.pt, best.pt).

    Args:
        resume: continue from out/last.pt (model, optimiser, scheduler, RNG and loader position).
        stop_after: stop (as if interrupted) once this many epochs are complete; for tests and budgets.
        on_batch(epoch, batch, n_batches, loss), on_epoch(row), on_start(info): progress callbacks; info["notes"]
            says which asked-for options do not apply on this device or model, and what runs instead.
    """
    t_start = time.time()
    out = Path(out)
    last_path = out / "last.pt"
    state = None
    if resume:
        if not last_path.is_file():
            raise ChanscopeError(f"--resume: {last_path} does not exist; start without --resume")
        state = read_checkpoint(last_path)
        if "train_state" not in state:
            raise ChanscopeError(f"--resume: {last_path} holds no training state; start a new --out")
    elif last_path.exists():
        raise ChanscopeError(f"{out} already holds a run; add --resume to continue it or pick another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ChanscopeError(f"cannot create run folder {str(out)!r} ({e.strerror}); pick another --out") from None

    device, distributed = dist_util.setup_device(cfg.device)
    main_rank = dist_util.is_main()
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    data, val = prepare_data(cfg)
    input_shape = list(data.x_train.shape[1:])  # in every checkpoint: eval refuses images of another size
    augment = data.augment if cfg.augment is None else cfg.augment
    if cfg.eval_n > len(data.y_test) or (cfg.val_n and cfg.eval_n > cfg.val_n):
        raise ChanscopeError(f"eval_n={cfg.eval_n} is larger than the test set ({len(data.y_test)}) or the "
                             f"validation split ({cfg.val_n})")
    model = build_model(cfg, data)
    if cfg.init and state is None:
        _load_init(model, cfg.init)
    model.to(device)
    if isinstance(model, CifarResNet):
        model.layout = cfg.layout
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
    # what runs: config.json and the checkpoints keep the asked-for cfg, `resolved.compile` what ran
    compile_note = cfg.compile_skipped(device.type)
    run_cfg = replace(cfg, compile=False) if compile_note else cfg
    notes = [compile_note] if compile_note else []  # for on_start: asked for, not applied here
    if cfg.cuda_graphs and not cuda:
        notes.append("--cuda-graphs applies on CUDA only; the attack runs eagerly here")
    fwd_model = torch.compile(model) if run_cfg.compile else model
    update_model = fwd_model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # CPU/gloo: BN statistics stay per rank
            fwd_model = update_model = model
        update_model = DDP(fwd_model, device_ids=[device.index] if cuda else None)

    bf16 = cfg.uses_bf16(device.type)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.resolved_milestones(), gamma=0.1)
    loader = BatchLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, augment=augment,
                         seed=cfg.seed, device=device, rank=dist_util.rank(), world_size=dist_util.world_size())
    def fixed_set(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """eval_n class-balanced seeded images of (x, y) in [0, 1] on the device, measured every epoch."""
        idx = balanced_subset(y, min(cfg.eval_n, len(y)), data.num_classes, cfg.seed)
        return x[idx].to(device).float().div_(255), y[idx].to(device)

    x_eval, y_eval = fixed_set(data.x_test, data.y_test)  # after the last epoch (every epoch without val_n)
    x_val, y_val = fixed_set(val.x, val.y) if cfg.val_n else (None, None)  # selection reads these
    # the same measurement on training images: eval mode, mask from the prediction (as test sees the model)
    x_tr_eval, y_tr_eval = fixed_set(data.x_train, data.y_train)

    rows: list[dict[str, float]] = []
    start_epoch, best_metric, best_epoch = 0, -1.0, 0
    partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    if state is not None:
        model.load_state_dict(state["state_dict"])
        ts = state["train_state"]
        opt.load_state_dict(ts["optimizer"])
        sched.load_state_dict(ts["scheduler"])
        sched.milestones = Counter(cfg.resolved_milestones())
        loader.load_state_dict(ts["loader"])
        _set_rng_state(ts["rng"])
        rows = [dict(r) for r in ts["metrics"]]
        start_epoch, best_metric, best_epoch = ts["epoch"], ts["best_metric"], ts["best_epoch"]
        partial = dict(ts["partial"])

    config_record = {"config": cfg.to_dict(), "resolved": {"milestones": cfg.resolved_milestones(),
                     "feature_select": cfg.feature_select, "adversarial": cfg.adversarial,
                     "loss": cfg.loss, "augment": augment, "device": str(device), "bf16": bf16,
                     "layout": resolve_layout(cfg.layout, device.type), "cpu_alloc": current_cpu_alloc(),
                     "compile": run_cfg.compile},
                     "model": {"arch": cfg.arch, "model_kwargs": model.model_kwargs},
                     "data": data.describe(), "validation": val.record, "versions": versions()}
    config_record["resolved"]["world_size"] = dist_util.world_size()
    if main_rank:
        atomic_write_json(out / "config.json", config_record)
    else:  # progress and files belong to rank 0
        on_start = on_batch = on_epoch = None
    if on_start:
        on_start({"device": str(device), "n_train": len(data.y_train), "batches": len(loader),
                  "start_epoch": start_epoch, "params": sum(p.numel() for p in model.parameters()),
                  "notes": notes})

    def snapshot(epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "loader": loader.state_dict(), "rng": _rng_state(), "metrics": rows,
                "best_metric": best_metric, "best_epoch": best_epoch, "partial": dict(partial)}

    def save_last(epoch: int) -> None:
        if main_rank:
            save_checkpoint(last_path, model, config=cfg.to_dict(), input_shape=input_shape, classes=data.classes,
                            train_state=snapshot(epoch))
        dist_util.barrier()

    # selection reads the validation split; runs made without one (val_n 0) select on the test subset
    held_out = "val" if cfg.val_n else "test"
    metric_key = f"{held_out}_pgd_acc" if cfg.adversarial else f"{held_out}_nat_acc"
    with _sigint_flag() as flag:
        for epoch in range(start_epoch, cfg.epochs):
            if stop_after is not None and epoch >= stop_after:
                raise TrainInterrupted(f"stopped after epoch {epoch}; continue with --resume")
            t0 = time.time()
            model.train()
            n_batches = len(loader)
            for xb, yb in loader:
                if cuda and cfg.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                loss, logits = batch_loss(run_cfg, fwd_model, xb, yb, autocast, update_model)
                if not math.isfinite(loss.item()):
                    raise ChanscopeError(
                        f"loss became {loss.item()} in epoch {epoch + 1}; stopped, {last_path} keeps the last "
                        "good state; lower --lr or check the data")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                partial["loss_sum"] += loss.item() * len(yb)
                partial["correct"] += (logits.argmax(1) == yb).sum().item()
                partial["seen"] += len(yb)
                if on_batch:
                    on_batch(epoch, -(-partial["seen"] * dist_util.world_size() // cfg.batch_size), n_batches,
                             loss.item())
                if distributed:  # every rank stops at the same batch
                    stop = torch.tensor([float(flag["stop"])])
                    dist_util.all_reduce_sum([stop])
                    flag["stop"] = bool(stop.item())
                if flag["stop"]:
                    partial["seconds"] += time.time() - t0
                    save_last(epoch)
                    raise TrainInterrupted(f"interrupted in epoch {epoch + 1}; state saved to {last_path}, "
                                           "continue with --resume")
            lr = opt.param_groups[0]["lr"]
            sched.step()
            seconds = partial["seconds"] + time.time() - t0
            last = epoch + 1 == cfg.epochs
            do_eval = (epoch + 1) % cfg.eval_every == 0 or last
            nan2 = (float("nan"),) * 2
            v_nat, v_adv = evaluate_subset(model, x_val, y_val, cfg) if do_eval and cfg.val_n else nan2
            nat, adv = evaluate_subset(model, x_eval, y_eval, cfg) if (last or not cfg.val_n) and do_eval else nan2
            tr_nat, tr_adv = evaluate_subset(model, x_tr_eval, y_tr_eval, cfg) if do_eval else nan2
            sums = torch.tensor([partial["loss_sum"], partial["correct"], partial["seen"]], dtype=torch.float64)
            dist_util.all_reduce_sum([sums])
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(sums[0] / sums[2].clamp_min(1)),
                   "train_acc": percent(int(sums[1]), max(1, int(sums[2]))),
                   "val_nat_acc": v_nat, "val_pgd_acc": v_adv, "test_nat_acc": nat, "test_pgd_acc": adv,
                   "train_eval_nat_acc": tr_nat,
                   "train_eval_pgd_acc": tr_adv, "seconds": round(seconds, 2)}
            rows.append(row)
            partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            metric = row[metric_key]
            if do_eval and metric > best_metric:
                best_metric, best_epoch = metric, epoch + 1
                if main_rank:
                    save_checkpoint(out / "best.pt", model, config=cfg.to_dict(), input_shape=input_shape,
                                    classes=data.classes, epoch=epoch + 1, metrics=row)
            save_last(epoch + 1)
            if main_rank:
                atomic_write_csv(out / "metrics.csv", pd.DataFrame(rows, columns=METRIC_COLUMNS))
            if on_epoch:
                on_epoch(row)
    total = time.time() - t_start
    summary = {"best_epoch": best_epoch, "best_" + metric_key: best_metric, "epochs": len(rows),
               "wall_seconds_this_invocation": round(total, 1)}
    if main_rank and (start_epoch < cfg.epochs or not (out / "summary.json").is_file()):
        atomic_write_json(out / "summary.json", summary)  # a resume with nothing left to train keeps its record
    return TrainResult(out, pd.DataFrame(rows, columns=METRIC_COLUMNS), best_epoch, best_metric, cfg, total)


def random_control(cfg: TrainConfig, out: str | Path) -> Path:
    """Write the control a verdict can fail against: cfg's architecture and normalisation as its seed
    initialises them, never trained, as a run folder (config.json with method 'random', best.pt)."""
    out = Path(out)
    data, val = prepare_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data).eval()
    shape = list(data.x_train.shape[1:])
    record = {"config": {**cfg.to_dict(), "method": "random", "epochs": 0, "init": None},
              "control": f"random initialisation (seed {cfg.seed}), never trained",
              "model": {"arch": cfg.arch, "model_kwargs": model.model_kwargs}, "data": data.describe(),
              "validation": val.record, "versions": versions()}
    atomic_write_json(out / "config.json", record)
    save_checkpoint(out / "best.pt", model, config=record["config"], input_shape=shape, classes=data.classes)
    return out / "best.pt"


def load_run_config(out: str | Path) -> TrainConfig:
    p = Path(out) / "config.json"
    if not p.is_file():
        raise ChanscopeError(f"{p} does not exist; is {out} a chanscope run folder?")
    try:
        return TrainConfig.from_dict(json.loads(p.read_text())["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ChanscopeError(f"{p} is not a chanscope config ({e}); start a new --out") from None
