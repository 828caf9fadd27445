"""`chanscope train`."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from chanscope.errors import parse_int_list
from chanscope.names import METHODS
from chanscope.scales import SCALES

from ._console import as_flags, console, fail, progress
from ._options import DataOpt, DataRootOpt, DeviceOpt, DownloadOpt, EpsOpt, SeedOpt, ThreatOpt


def train_command(
    method: Annotated[Optional[str], typer.Option(help=f"One of: {', '.join(METHODS)} (needed for a new run).")]
    = None,
    preset: Annotated[Optional[str], typer.Option(
        "--preset", "--scale",
        help=f"A scale, one of: {', '.join(SCALES)} (default: paper on a GPU, cpu on a CPU).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="Registry name, e.g. resnet18, wrn28_10.")] = None,
    width: Annotated[Optional[float], typer.Option(help="Channel multiplier, e.g. 0.25 on CPU.")] = None,
    natural: Annotated[Optional[bool], typer.Option("--natural", help="cifs/cas/fsr: natural training only.")]
    = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = None,
    subset: Annotated[Optional[int], typer.Option(help="Class-balanced training subset size.")] = None,
    val_n: Annotated[Optional[int], typer.Option(
        help="Validation images held out of the training set (class-balanced, seeded; best.pt is chosen on them; "
        "default 1000, cpu preset 500, smoke 100).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Overrides the preset's length.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (paper 128).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="SGD learning rate (paper 0.1).")] = None,
    milestones: Annotated[Optional[str], typer.Option(help="Comma list of lr x0.1 epochs (default 62.5%, 75%).")]
    = None,
    eps: EpsOpt = None,
    threat_model: ThreatOpt = None,
    step_size: Annotated[Optional[str], typer.Option(help="Training PGD step, e.g. 2/255.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training PGD steps (paper 10).")] = None,
    beta: Annotated[Optional[float], typer.Option(help="CIFS/CAS joint-loss beta (paper 2).")] = None,
    probes: Annotated[Optional[str], typer.Option(help="CIFS probe kinds per block, e.g. nonlinear,linear.")] = None,
    train_label: Annotated[Optional[str], typer.Option(help="CIFS training mask top-1: true (paper), pred, mix:p.")]
    = None,
    topk: Annotated[Optional[int], typer.Option(help="CIFS: logits summed for the relevance (paper 2).")] = None,
    mask: Annotated[Optional[str], typer.Option(help="CIFS mask: softmax, softmax_t:T, softmax_scaled, sigmoid.")]
    = None,
    select_stages: Annotated[Optional[str], typer.Option(help="Stages carrying CIFS/CAS, e.g. layer3,layer4.")]
    = None,
    tau: Annotated[Optional[float], typer.Option(help="FSR: mask temperature (official 0.1).")] = None,
    lam_sep: Annotated[Optional[float], typer.Option(help="FSR: separation loss weight (official 1).")] = None,
    lam_rec: Annotated[Optional[float], typer.Option(help="FSR: recalibration loss weight (official 1).")] = None,
    eval_n: Annotated[Optional[int], typer.Option(
        help="Validation images for the per-epoch check (as many test images after the last epoch).")] = None,
    init: Annotated[Optional[str], typer.Option(help="Start from this checkpoint's weights.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<method>-<arch>-<time>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out where it stopped.")] = False,
    bf16: Annotated[Optional[bool], typer.Option(
        "--bf16/--no-bf16", help="bf16 autocast of training passes (default: on CUDA only; --bf16 also on CPU, "
        "fast with AMX/AVX512-BF16; eval stays float32).")] = None,
    layout: Annotated[Optional[str], typer.Option(
        help="Activations' memory format: auto (CPU: channels-last at 16x16 and up, NCHW below), hybrid, nchw, "
        "channels_last. Speed only.")] = None,
    compile: Annotated[Optional[bool], typer.Option(
        "--compile/--no-compile", help="torch.compile the model (CUDA).")] = None,
    cuda_graphs: Annotated[Optional[bool], typer.Option(
        "--cuda-graphs/--no-cuda-graphs", help="CUDA: replay each training-attack iteration from a captured "
        "CUDA graph (less host time per step).")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Train a standard, PGD-AT, TRADES, CAS, CIFS or FSR model into a run folder."""
    from chanscope.train import build_config
    from chanscope.train.config import default_preset
    from chanscope.workflows.training import TrainInterrupted, resume_config
    from chanscope.workflows.training import fit as train

    given = train_options(
        method=method, arch=arch, width=width, natural=natural, data=data, data_root=data_root, download=download,
        subset=subset, val_n=val_n, epochs=epochs, batch_size=batch_size, lr=lr, milestones=milestones, eps=eps,
        threat_model=threat_model, step_size=step_size, steps=steps, beta=beta, probes=probes,
        train_label=train_label, topk=topk, mask=mask, select_stages=select_stages, eval_n=eval_n, init=init,
        tau=tau, lam_sep=lam_sep, lam_rec=lam_rec, bf16=bf16, layout=layout, compile=compile,
        cuda_graphs=cuda_graphs, seed=seed, device=device)
    if resume and out is None:
        raise fail("--resume needs --out DIR, the run folder to continue")
    if resume:
        cfg = resume_config(out, given, preset)
    else:
        if method is None:
            raise fail(f"--method is needed for a new run: one of {', '.join(METHODS)}")
        if preset is None:
            preset = default_preset(device)
            console.print(f"[yellow]note:[/] no --preset given: {preset!r} on this device"
                          + (" (the paper's recipe is --preset paper)" if preset != "paper" else ""))
        cfg = build_config(preset, **given)
    if out is None:
        out = Path("runs") / f"{cfg.method}-{cfg.arch}-{datetime.now():%Y%m%d-%H%M%S}"
    bar = progress()
    try:
        result = train(cfg, out, resume=resume, **_callbacks(cfg, out, bar))
    except TrainInterrupted as e:
        bar.stop()
        raise fail(as_flags(str(e)), code=130) from None
    finally:
        bar.stop()
    _render(result, cfg, out)


def train_options(*, milestones, probes, select_stages, **flags) -> dict:
    """The flags of `chanscope train` (but preset, out and resume) as TrainConfig fields (None: not given)."""
    return {**flags, "milestones": parse_int_list(milestones, "--milestones", "75,90") if milestones else None,
            "probes": probes.split(",") if probes else None,
            "select_stages": select_stages.split(",") if select_stages else None}


def _callbacks(cfg, out: Path, bar) -> dict:
    """Progress: a header and notes on start, a bar per epoch, one line per finished epoch."""
    task = {"id": None, "t": time.time(), "epoch": None}

    def on_start(info: dict) -> None:
        console.print(f"[bold]chanscope train[/] {cfg.method} {cfg.arch} width {cfg.width} on {info['device']}: "
                      f"{info['n_train']} images, {info['params'] / 1e6:.2f} M parameters -> {out}")
        for note in info["notes"]:  # options asked for that do not apply here (the library decides)
            console.print(f"[yellow]note:[/] {as_flags(note)}")
        bar.start()
        task["id"] = bar.add_task("epoch", total=info["batches"], info="")

    def on_batch(epoch: int, i: int, n: int, loss: float) -> None:
        if epoch != task["epoch"]:  # a new epoch: the bar's count, elapsed time and ETA start again
            task["epoch"] = epoch
            bar.reset(task["id"], total=n, description=f"epoch {epoch + 1}/{cfg.epochs}")
        rate = i * cfg.batch_size / max(1e-9, time.time() - task["t"])
        bar.update(task["id"], completed=i, total=n, description=f"epoch {epoch + 1}/{cfg.epochs}",
                   info=f"loss {loss:.3f}  {rate:.0f} img/s")

    def on_epoch(row: dict) -> None:
        task["t"] = time.time()
        held = "val" if cfg.val_n else "test"
        test = (f"  test nat {row['test_nat_acc']:.1f}% pgd {row['test_pgd_acc']:.1f}%"
                if cfg.val_n and row["test_nat_acc"] == row["test_nat_acc"] else "")  # measured after the last epoch
        bar.console.print(f"epoch {row['epoch']:>3}  lr {row['lr']:.4f}  loss {row['train_loss']:.3f}  "
                          f"train {row['train_acc']:.1f}%  {held} nat {row[held + '_nat_acc']:.1f}%  "
                          f"pgd {row[held + '_pgd_acc']:.1f}%{test}  {row['seconds']:.0f}s", highlight=False)

    return {"on_start": on_start, "on_batch": on_batch, "on_epoch": on_epoch}


def _render(result, cfg, out: Path) -> None:
    table = Table(title=f"{cfg.method} {cfg.arch} ({out})")
    for col in ("epoch", "lr", "train loss", "train acc %", "val nat %", "val PGD %", "test nat %", "test PGD %",
                "s"):
        table.add_column(col, justify="right")
    for _, r in result.metrics.iterrows():
        table.add_row(f"{int(r.epoch)}", f"{r.lr:.4f}", f"{r.train_loss:.3f}", f"{r.train_acc:.1f}",
                      *[f"{v:.1f}" if v == v else "-" for v in (r.val_nat_acc, r.val_pgd_acc, r.test_nat_acc,
                                                                r.test_pgd_acc)], f"{r.seconds:.0f}")
    console.print(table)
    console.print(f"best epoch {result.best_epoch} ({result.best_metric:.1f}% on the "
                  f"{'validation split' if cfg.val_n else 'test subset'}), {result.seconds:.0f}s; "
                  f"files in {out}: config.json metrics.csv last.pt best.pt")


def control_command(
    like: Annotated[Path, typer.Option(help="A trained run folder: the control takes its architecture, data and "
                                       "seed.")],
    out: Annotated[Path, typer.Option(help="The control's run folder (a study's: random/).")],
) -> None:
    """Make a random control: a trained run's architecture as its seed initialises it, the convolutions never
    trained, BatchNorm statistics and a linear read-out fitted on training images."""
    from chanscope.io import read_json
    from chanscope.workflows.jobs import ControlJob
    from chanscope.workflows.training import load_run_config

    made = read_json(out / "config.json").get("config", {}).get("method")
    if made not in (None, "random"):
        raise fail(f"--out {out} holds a trained {made} run; give the control a folder of its own")
    job = ControlJob(like, load_run_config(like), out)
    if job.done():
        console.print(f"{out}: the control is made already (delete the folder to make it again)")
        return
    job.run("control")
    console.print(f"random control of {like} -> {out}: {read_json(out / 'config.json').get('control', '')}")
