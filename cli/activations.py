"""`chanscope activations`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from chanscope.errors import parse_fraction
from chanscope.names import RELEVANCE_METHODS

from ._console import console, progress
from ._options import (
    ClassesByOpt,
    DataOpt,
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    EpsOpt,
    ModelOpt,
    SeedOpt,
    ThreatOpt,
    budget,
    with_model_source,
)

if TYPE_CHECKING:  # torch: the workflow is imported when the command runs, not when the CLI starts
    from chanscope.models.sources import ModelOptions

SHOWN = {"class_name": "class", "n": "n", "nat_acc": "nat%", "adv_acc": "adv%", "cosine_adv_nat": "cos",
         "mean_abs_gap": "|gap|", "nr_over_abs": "NR over", "nr_over_rel": "NR rel", "pr_under_abs": "PR under",
         "spearman_nat": "rho nat", "spearman_adv": "rho adv", "n_pr": "#PR", "n_nr": "#NR"}


@with_model_source
def activations_command(
    model: ModelOpt,
    layer: Annotated[Optional[list[str]], typer.Option(help="Module name(s) (repeatable); default: penultimate.")]
    = None,
    attack: Annotated[str, typer.Option(
        "--attack", "--attacks", help="Any attack of `chanscope eval` (pgd20, cw20, fgsm, aa, ...).")]
    = "pgd20",
    relevance: Annotated[str, typer.Option(help=f"One of: {', '.join(RELEVANCE_METHODS)}.")] = "gradient",
    relevance_on: Annotated[str, typer.Option(help="Score relevance on natural or adversarial inputs.")]
    = "natural",
    eps: EpsOpt = None,
    threat_model: ThreatOpt = None,
    n: Annotated[Optional[int], typer.Option(
        help="Class-balanced test images (default 1000, or the whole test set where it is smaller). The whole "
        "CIFAR-10 test set (--n 10000) takes 10x as long as the default.")] = None,
    threshold: Annotated[float, typer.Option(help="Active: magnitude > threshold x the input's largest.")] = 1e-2,
    beta_atk: Annotated[float, typer.Option(help="Joint-loss beta for adaptive attacks.")] = 2.0,
    follow_mask: Annotated[bool, typer.Option(
        "--follow-mask", help="The --attack differentiates through CIFS's relevance and mask.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 250,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the run's).")] = None,
    classes_by: ClassesByOpt = "name",
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    model_options: ModelOptions | None = None,
) -> None:
    """Record per-class channel magnitudes on natural vs adversarial inputs, with channel relevance."""
    from chanscope.workflows.activations import run_activations

    bar = progress()
    task = {}

    def on_ready(info: dict) -> None:
        console.print(f"[bold]chanscope activations[/] {model}: layers {', '.join(info['layers'])}, {info['n']} "
                      f"images of {info['data']}, attack {info['attack']} ({info['spec'].norm} eps "
                      f"{budget(info['spec'].eps, info['spec'].norm)}), relevance {relevance}")
        for note in info["notes"]:
            console.print(f"[yellow]note:[/] {note}")
        bar.start()
        task["id"] = bar.add_task("images", total=info["n"], info="")

    try:
        options = activation_options(
            layer=layer, attack=attack, relevance=relevance, relevance_on=relevance_on, eps=eps,
            threat_model=threat_model, n=n, threshold=threshold, beta_atk=beta_atk, follow_mask=follow_mask,
            batch_size=batch_size, data=data, data_root=data_root, download=download, out=out,
            classes_by=classes_by, seed=seed, device=device)
        results, meta = run_activations(
            str(model), options, on_ready=on_ready,
            model_options=model_options,
            progress=lambda done, total: bar.update(task["id"], completed=done))
    finally:
        bar.stop()
    for res, fname in zip(results, meta.get("files", [])):  # other ranks of torchrun write nothing
        table = Table(title=f"{fname}: {res.layer} ({relevance} relevance, {attack})")
        for head in SHOWN.values():
            table.add_column(head, justify="right")
        for _, r in res.classes.iterrows():
            table.add_row(*[(f"{r[c]:.1f}" if c.endswith("acc") else f"{r[c]:.3f}") if isinstance(r[c], float)
                            else str(r[c]) for c in SHOWN])
        console.print(table)
    console.print(f"wrote {', '.join(meta['files'])} with their channels, examples and activations files in "
                  f"{meta['out']} ({meta['wall_seconds']:.0f}s)")


def activation_options(*, layer, attack, relevance, relevance_on, eps, threat_model, n, threshold, beta_atk,
                       follow_mask, batch_size, data, data_root, download, out, classes_by, seed, device):
    """The flags of `chanscope activations` (but the model's) as the workflow's ActivationOptions."""
    from chanscope.workflows.activations import ActivationOptions

    return ActivationOptions(
        eps=parse_fraction(eps) if eps is not None else None, threat_model=threat_model,
        n=n, beta_atk=beta_atk, follow_mask=follow_mask, batch_size=batch_size,
        seed=seed or 0, device=device, data=data, data_root=data_root, download=bool(download),
        classes_by=classes_by, out=str(out) if out else None, layers=list(layer) if layer else None,
        attack=attack, relevance=relevance, relevance_on=relevance_on, threshold=threshold)
