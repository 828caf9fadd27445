"""`chanscope zoo`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._console import console
from ._options import DataOpt, DatasetOpt, DeviceOpt, EpsOpt, ModelDirOpt, budget


def zoo_command(
    model: Annotated[Optional[list[str]], typer.Option(
        help="A model (repeatable): checkpoint, run or study folder, torchvision:/timm:/robustbench:NAME, an "
        "exported file or module:callable.")] = None,
    models_file: Annotated[Optional[Path], typer.Option(
        help="A file with one model per line: SPEC [weights=PATH] [mean=A,B,C std=A,B,C]; # comments.")] = None,
    out: Annotated[Path, typer.Option(help="The zoo folder; a rerun measures only the models not measured yet.")]
    = Path("runs/zoo"),
    data: DataOpt = None,
    attack: Annotated[str, typer.Option(help="The attack of the activation study and robust accuracy.")] = "pgd20",
    threat_model: Annotated[str, typer.Option(
        "--threat-model", help="linf or l2 (attacks, and the robustbench: zoo folder's Linf/L2).")] = "linf",
    eps: EpsOpt = None,
    n: Annotated[int, typer.Option(help="Class-balanced test images per model.")] = 500,
    layer: Annotated[Optional[str], typer.Option(help="Layer (default: each model's penultimate).")] = None,
    relevance: Annotated[str, typer.Option(help="gradient, grad-x-act or ablation.")] = "gradient",
    aa_n: Annotated[int, typer.Option(help="AutoAttack on the first N of the images (0: none).")] = 0,
    model_dir: ModelDirOpt = "models",
    dataset: DatasetOpt = "cifar10",
    seed: Annotated[int, typer.Option(help="Seed of the image subset, attacks and bootstrap.")] = 0,
    device: DeviceOpt = None,
) -> None:
    """The observations' statistics over a population of models, and whether any predicts robust accuracy
    beyond natural accuracy."""
    from chanscope.errors import check_threat_model, parse_fraction
    from chanscope.workflows.zoo import Protocol, parse_models, run_zoo

    t0 = time.time()
    norm = check_threat_model(threat_model)
    models = parse_models(model, models_file)
    p = Protocol(data=data or "embedded", attack=attack, threat_model=norm,
                 eps=parse_fraction(eps) if eps is not None else None, n=n, layer=layer, relevance=relevance,
                 aa_n=aa_n, seed=seed, model_options={"model_dir": model_dir, "dataset": dataset,
                                                      "threat_model": {"linf": "Linf", "l2": "L2"}[norm]})
    console.print(f"[bold]chanscope zoo[/] {len(models)} models, {attack} at {norm} eps {budget(p.budget(), norm)}")
    df, analysis = run_zoo(models, p, out, device=device, progress=lambda s: console.print(f"  {s}", highlight=False))
    for a in analysis.itertuples():
        console.print(f"  {a.statistic}: partial rank corr. {a.partial:+.2f} [{a.partial_lo:+.2f}, {a.partial_hi:+.2f}]"
                      f", p {a.p_perm:.3f}: {a.verdict}", highlight=False)
    console.print(f"Wrote {out}/zoo.csv, zoo-analysis.csv, zoo.md, zoo-figure.png ({time.time() - t0:.0f}s)")
