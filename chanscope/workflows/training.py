"""`chanscope train`: fit a model by its TrainConfig into a run folder, resumable to the batch.

Reads top to bottom: `fit` opens the run, sets the session up (data, model, optimiser, the method), then per
epoch trains (`chanscope.train.epoch.train_one_epoch`), measures the validation split, keeps the best and
the last checkpoints and metrics.csv. Speed (layout, folded attack, CUDA graphs, compile, DDP) is applied
here from `chanscope.accel`; the core does not know of it. Printing is the caller's business (callbacks).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from chanscope.accel import distributed as dist_util
from chanscope.accel.cpu_alloc import current_cpu_alloc
from chanscope.accel.layout import resolve_layout, set_layout
from chanscope.accel.training import fast_craft
from chanscope.checkpoint import save_checkpoint
from chanscope.data import BatchLoader, balanced_subset
from chanscope.errors import ChanscopeError
from chanscope.io import atomic_write_csv, atomic_write_json, versions
from chanscope.observe.analysis import percent
from chanscope.train.config import TrainConfig, build_config, config_diff
from chanscope.train.epoch import EpochStats, NonFiniteLoss, Stopped, subset_correct, train_one_epoch
from chanscope.train.methods import method_for
from chanscope.train.setup import build_model, load_init, prepare_data
from chanscope.workflows.runs import folder_lock
from chanscope.workflows.train_state import Progress, open_run, restore, sigint_flag, snapshot

__all__ = ["fit", "TrainResult", "TrainInterrupted", "METRIC_COLUMNS", "random_control", "calibrate_batchnorm",
           "load_run_config",
           "resume_config"]

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_nat_acc", "val_pgd_acc", "test_nat_acc",
                  "test_pgd_acc", "train_eval_nat_acc", "train_eval_pgd_acc", "seconds"]


class TrainInterrupted(Exception):
    """Raised after Ctrl-C once the state has been saved; resuming continues from it."""


@dataclass
class TrainResult:
    out: Path
    metrics: pd.DataFrame
    best_epoch: int
    best_metric: float
    config: TrainConfig
    seconds: float


@dataclass
class _Session:
    """Everything one run's epochs share."""

    cfg: TrainConfig
    out: Path
    model: nn.Module  # the module whose weights are saved
    fwd: nn.Module  # what crafts and forwards (compiled, where asked)
    update: nn.Module  # what the update runs through (DDP, where distributed)
    opt: torch.optim.Optimizer
    sched: Any
    loader: BatchLoader
    method: Any
    autocast: Callable
    sets: dict[str, tuple[torch.Tensor, torch.Tensor] | None]  # val, test, train_eval: the fixed subsets
    record: dict[str, Any]  # config.json
    classes: list[str] | None
    input_shape: list[int]
    notes: list[str]
    channels_last: bool
    progress: Progress = field(default_factory=Progress)


def _place(cfg: TrainConfig, model: nn.Module, device: torch.device, distributed: bool):
    """The model on its device with the speed options applied: (model, forward module, update module, notes,
    the config as it runs: compile off where it does not apply)."""
    model.to(device)
    set_layout(model, cfg.layout)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
    compile_note = cfg.compile_skipped(device.type)
    notes = [compile_note] if compile_note else []  # asked for, not applied here
    run_cfg = replace(cfg, compile=False) if compile_note else cfg
    if cfg.cuda_graphs and not cuda:
        notes.append("`cuda_graphs` applies on CUDA only; the attack runs eagerly here")
    fwd = torch.compile(model) if run_cfg.compile else model
    update = fwd
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # CPU/gloo: BN statistics stay per rank
            fwd = update = model
        update = DDP(fwd, device_ids=[device.index] if cuda else None)
    return model, fwd, update, notes, run_cfg


def _session(cfg: TrainConfig, out: Path, state: dict | None) -> _Session:
    device, distributed = dist_util.setup_device(cfg.device)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    data, val = prepare_data(cfg)
    augment = data.augment if cfg.augment is None else cfg.augment
    if cfg.eval_n > len(data.y_test) or (cfg.val_n and cfg.eval_n > cfg.val_n):
        raise ChanscopeError(f"`eval_n`={cfg.eval_n} is larger than the test set ({len(data.y_test)}) or the "
                             f"validation split (`val_n`={cfg.val_n})")
    model = build_model(cfg, data)
    if cfg.init and state is None:
        load_init(model, cfg.init)
    model, fwd, update, notes, run_cfg = _place(cfg, model, device, distributed)
    notes += data.warnings
    bf16 = cfg.uses_bf16(device.type)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.resolved_milestones(), gamma=0.1)
    loader = BatchLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, augment=augment,
                         seed=cfg.seed, device=device, rank=dist_util.rank(), world_size=dist_util.world_size())

    def fixed_set(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """eval_n class-balanced seeded images of (x, y) in [0, 1] on the device."""
        idx = balanced_subset(y, min(cfg.eval_n, len(y)), data.num_classes, cfg.seed)
        return x[idx].to(device).float().div_(255), y[idx].to(device)

    # selection reads val; test is measured after the last epoch only (every epoch in runs without val_n);
    # train_eval: the same measurement on training images (eval mode, mask from the prediction)
    sets = {"val": fixed_set(val.x, val.y) if cfg.val_n else None, "test": fixed_set(data.x_test, data.y_test),
            "train_eval": fixed_set(data.x_train, data.y_train)}
    record = {"config": cfg.to_dict(), "resolved": {
        "milestones": cfg.resolved_milestones(), "feature_select": cfg.feature_select,
        "adversarial": cfg.adversarial, "loss": cfg.loss, "augment": augment, "device": str(device), "bf16": bf16,
        "layout": resolve_layout(cfg.layout, device.type), "cpu_alloc": current_cpu_alloc(),
        "compile": run_cfg.compile, "world_size": dist_util.world_size()},
        "model": {"arch": cfg.arch, "model_kwargs": model.model_kwargs}, "data": data.describe(),
        "validation": val.record, "versions": versions()}
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    return _Session(run_cfg, out, model, fwd, update, opt, sched, loader, method_for(run_cfg, fast_craft(run_cfg)),
                    autocast, sets, record, data.classes, list(data.x_train.shape[1:]), notes,
                    device.type == "cuda" and cfg.channels_last)


def _measure(s: _Session, name: str) -> tuple[float, float]:
    """Natural and PGD accuracy (%) on one fixed subset, split over the ranks."""
    xy = s.sets[name]
    if xy is None:
        return float("nan"), float("nan")
    x, y = xy
    part = dist_util.shard(len(y))
    counts = torch.tensor(subset_correct(s.model, x[part], y[part], s.cfg), dtype=torch.float64)
    dist_util.all_reduce_sum([counts])
    n = max(1, len(y))
    return percent(int(counts[0]), n), percent(int(counts[1]), n)


def _epoch_row(s: _Session, epoch: int, lr: float, seconds: float) -> dict[str, float]:
    cfg, nan2 = s.cfg, (float("nan"),) * 2
    last = epoch + 1 == cfg.epochs
    do_eval = (epoch + 1) % cfg.eval_every == 0 or last
    v_nat, v_adv = _measure(s, "val") if do_eval else nan2
    nat, adv = _measure(s, "test") if do_eval and (last or not cfg.val_n) else nan2
    tr_nat, tr_adv = _measure(s, "train_eval") if do_eval else nan2
    st = s.progress.stats
    sums = torch.tensor([st.loss_sum, st.correct, st.seen], dtype=torch.float64)
    dist_util.all_reduce_sum([sums])
    return {"epoch": epoch + 1, "lr": lr, "train_loss": float(sums[0] / sums[2].clamp_min(1)),
            "train_acc": percent(int(sums[1]), max(1, int(sums[2]))), "val_nat_acc": v_nat, "val_pgd_acc": v_adv,
            "test_nat_acc": nat, "test_pgd_acc": adv, "train_eval_nat_acc": tr_nat, "train_eval_pgd_acc": tr_adv,
            "seconds": round(seconds, 2)}


def _save_last(s: _Session, epoch: int) -> None:
    if dist_util.is_main():
        save_checkpoint(s.out / "last.pt", s.model, config=s.cfg.to_dict(), input_shape=s.input_shape,
                        classes=s.classes, train_state=snapshot(epoch, s.progress, s.opt, s.sched, s.loader))
    dist_util.barrier()


def _one_epoch(s: _Session, epoch: int, flag: dict[str, bool], on_batch) -> float:
    """Train epoch `epoch` (from where a resume left it); returns its seconds. Saves and raises on Ctrl-C."""
    t0 = time.time()
    world, n_batches = dist_util.world_size(), len(s.loader)

    def should_stop() -> bool:
        if dist_util.active():  # every rank stops at the same batch
            stop = torch.tensor([float(flag["stop"])])
            dist_util.all_reduce_sum([stop])
            flag["stop"] = bool(stop.item())
        return flag["stop"]

    report = (lambda seen, loss: on_batch(epoch, -(-seen * world // s.cfg.batch_size), n_batches, loss)) \
        if on_batch else None
    prepare = (lambda xb: xb.contiguous(memory_format=torch.channels_last)) if s.channels_last else None
    try:
        train_one_epoch(s.fwd, s.method, s.loader, s.opt, s.progress.stats, autocast=s.autocast, net=s.update,
                        prepare=prepare, on_batch=report, should_stop=should_stop)
    except NonFiniteLoss as e:
        raise ChanscopeError(f"loss became {e.value} in epoch {epoch + 1}; stopped, {s.out / 'last.pt'} keeps the "
                             "last good state; lower `lr` or check the data") from None
    except Stopped:
        s.progress.stats.seconds += time.time() - t0
        _save_last(s, epoch)
        raise TrainInterrupted(f"interrupted in epoch {epoch + 1}; state saved to {s.out / 'last.pt'}, "
                               "continue with `resume`") from None
    return s.progress.stats.seconds + time.time() - t0


def _finish_epoch(s: _Session, epoch: int, seconds: float, metric_key: str) -> dict[str, float]:
    """Measure, keep the best (by the held-out metric) and the last checkpoint, write metrics.csv."""
    p, main = s.progress, dist_util.is_main()
    lr = s.opt.param_groups[0]["lr"]
    s.sched.step()
    row = _epoch_row(s, epoch, lr, seconds)
    p.rows.append(row)
    p.stats = EpochStats()
    if row[metric_key] > p.best_metric:  # NaN (no measurement this epoch) is never better
        p.best_metric, p.best_epoch = row[metric_key], epoch + 1
        if main:
            save_checkpoint(s.out / "best.pt", s.model, config=s.cfg.to_dict(), input_shape=s.input_shape,
                            classes=s.classes, epoch=epoch + 1, metrics=row)
    _save_last(s, epoch + 1)
    if main:
        atomic_write_csv(s.out / "metrics.csv", pd.DataFrame(p.rows, columns=METRIC_COLUMNS))
    return row


def fit(cfg: TrainConfig, out: str | Path, *, resume: bool = False, stop_after: int | None = None,
        on_batch: Callable[[int, int, int, float], None] | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        on_start: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a model by `cfg` into run folder `out` (config.json, metrics.csv, last.pt, best.pt, summary.json).

    Args:
        resume: continue from out/last.pt (model, optimiser, scheduler, RNG and loader position).
        stop_after: stop (as if interrupted) once this many epochs are complete; for tests and budgets.
        on_batch(epoch, batch, n_batches, loss), on_epoch(row), on_start(info): progress callbacks; info["notes"]
            says which asked-for options do not apply on this device or model, and what runs instead.
    """
    with folder_lock(out) as out:  # a run refused before it wrote anything leaves no empty folder
        return _fit(cfg, out, resume, stop_after, on_batch, on_epoch, on_start)


def _fit(cfg: TrainConfig, out: Path, resume: bool, stop_after: int | None, on_batch, on_epoch,
         on_start) -> TrainResult:
    t_start = time.time()
    state = open_run(out, resume)
    s = _session(cfg, out, state)
    if state is not None:
        s.progress = restore(state, s.model, s.opt, s.sched, s.loader, cfg.resolved_milestones())
    p = s.progress
    if dist_util.is_main():
        atomic_write_json(out / "config.json", s.record)
    else:  # progress and files belong to rank 0
        on_start = on_batch = on_epoch = None
    if on_start:
        on_start({"device": s.record["resolved"]["device"], "n_train": len(s.loader.y), "batches": len(s.loader),
                  "start_epoch": p.start_epoch, "params": sum(q.numel() for q in s.model.parameters()),
                  "notes": s.notes})
    # selection reads the validation split; runs made without one (val_n 0) select on the test subset
    metric_key = f"{'val' if cfg.val_n else 'test'}_{'pgd' if cfg.adversarial else 'nat'}_acc"
    with sigint_flag() as flag:
        for epoch in range(p.start_epoch, cfg.epochs):
            if stop_after is not None and epoch >= stop_after:
                raise TrainInterrupted(f"stopped after epoch {epoch}; continue with `resume`")
            row = _finish_epoch(s, epoch, _one_epoch(s, epoch, flag, on_batch), metric_key)
            if on_epoch:
                on_epoch(row)
    total = time.time() - t_start
    if dist_util.is_main() and (p.start_epoch < cfg.epochs or not (out / "summary.json").is_file()):
        atomic_write_json(out / "summary.json", {  # a resume with nothing left to train keeps its record
            "best_epoch": p.best_epoch, "best_" + metric_key: p.best_metric, "epochs": len(p.rows),
            "wall_seconds_this_invocation": round(total, 1)})
    return TrainResult(out, pd.DataFrame(p.rows, columns=METRIC_COLUMNS), p.best_epoch, p.best_metric, cfg, total)


CONTROL_BN_IMAGES = 2000  # natural training images the random control's BatchNorm statistics are estimated on


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 250) -> int:
    """Replace every BatchNorm's running statistics by their exact average over the images x (uint8 or [0, 1]),
    weights untouched: a random network then normalises real images as it would after training, instead of
    with the initial mean 0 / variance 1 (under which it predicts one class). Returns the images used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size]
                model(xb.float().div(255) if xb.dtype == torch.uint8 else xb)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)
    return len(x)


def fit_readout(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight_decay: float = 1e-4,
                batch_size: int = 500) -> float:
    """Fit the classifier (`model.linear`) of a network on its pooled features of images x (uint8) by full-batch
    L-BFGS on cross-entropy, the features themselves untouched; returns the training accuracy (%)."""
    with torch.no_grad():
        feats = torch.cat([model.forward_features(x[i:i + batch_size].float().div(255)).mean(dim=(2, 3))
                           for i in range(0, len(x), batch_size)])
    lin = model.linear
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(feats), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return percent(int((lin(feats).argmax(1) == y).sum()), len(y))


def random_control(cfg: TrainConfig, out: str | Path, bn_images: int = CONTROL_BN_IMAGES,
                   readout: bool = True) -> Path:
    """Write the control a verdict can fail against: cfg's architecture and normalisation as its seed
    initialises them, the convolutions never trained, with BatchNorm statistics estimated on `bn_images`
    natural training images and (readout) the linear classifier fitted on the training images' random features,
    as a run folder (config.json with method 'random', best.pt). Without both it is no classifier: a network
    with the initial statistics predicts one class and no attack moves it. Whether it is a valid control (its
    predictions spread over the classes, an attack moves them) is measured on test images by the activation
    study (`chanscope.observe.verdicts.control_validity`)."""
    out = Path(out)
    data, val = prepare_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data)
    used = 0
    if bn_images:
        idx = balanced_subset(data.y_train, min(bn_images, len(data.y_train)), data.num_classes, cfg.seed)
        used = calibrate_batchnorm(model, data.x_train[idx])
    model.eval()
    fitted = readout and hasattr(model, "forward_features") and isinstance(getattr(model, "linear", None), nn.Linear)
    train_acc = fit_readout(model, data.x_train, data.y_train) if fitted else None
    how = f"BatchNorm statistics of {used} natural training images" if used else "initial BatchNorm statistics"
    how += f"; linear classifier fitted on {len(data.y_train)} training images" if fitted else "; random classifier"
    record = {"config": {**cfg.to_dict(), "method": "random", "epochs": 0, "init": None},
              "control": f"random initialisation (seed {cfg.seed}), convolutions never trained; {how}",
              "bn_images": used, "readout": {"fitted": bool(fitted), "train_acc": train_acc},
              "model": {"arch": cfg.arch, "model_kwargs": model.model_kwargs}, "data": data.describe(),
              "validation": val.record, "versions": versions()}
    save_checkpoint(out / "best.pt", model, config=record["config"], input_shape=list(data.x_train.shape[1:]),
                    classes=data.classes)
    atomic_write_json(out / "config.json", record)  # last: a control cut off before it is not taken as made
    return out / "best.pt"


def resume_config(out: str | Path, given: dict[str, Any], preset: str | None = None) -> TrainConfig:
    """The config to continue the run in `out` with: the stored one, with the options given (not None) that
    may change on a resume (more epochs, another device); any other differing option is refused."""
    stored = load_run_config(out)
    explicit = {k for k, v in given.items() if v is not None}
    stored_values = {k: v for k, v in stored.to_dict().items() if k != "preset"}
    cfg = build_config(preset or stored.preset, **{**stored_values, **{k: given[k] for k in explicit}})
    diff = config_diff(stored, cfg, explicit | ({"preset"} if preset else set()))
    if diff:
        raise ChanscopeError(f"`resume` on a run with different options ({'; '.join(diff)}); drop them or pick "
                             "another `out`")
    cfg.preset = stored.preset
    return cfg


def load_run_config(out: str | Path) -> TrainConfig:
    p = Path(out) / "config.json"
    if not p.is_file():
        raise ChanscopeError(f"{p} does not exist; is {out} a chanscope run folder?")
    try:
        return TrainConfig.from_dict(json.loads(p.read_text())["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ChanscopeError(f"{p} is not a chanscope config ({e}); start a new run folder") from None
