"""`chanscope sensitivity`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._console import console
from ._options import DeviceOpt


def sensitivity_command(
    study: Annotated[Path, typer.Option(help="A `chanscope reproduce` folder (its --out): standard, AT, the random "
                                             "control and any other method, every seed.")],
    layer: Annotated[Optional[list[str]], typer.Option(
        help="Layers of the grid (repeatable); default every stage output and the classifier's input.")] = None,
    relevances: Annotated[str, typer.Option(help="Comma-separated: gradient, grad-x-act, ablation.")]
    = "gradient,grad-x-act,ablation",
    attacks: Annotated[str, typer.Option(
        help="Comma-separated attacks that make the adversarial images: cross-entropy PGD, CW-margin PGD, targeted "
        "PGD toward the likeliest wrong class (a CIFS model follows its mask).")] = "pgd20,cw20,tpgd20",
    n: Annotated[int, typer.Option(help="Class-balanced test images per seed.")] = 500,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default <study>/sensitivity).")] = None,
    device: DeviceOpt = None,
) -> None:
    """The observations on a grid of layers x relevance definitions x attacks, each beside its control."""
    from chanscope.workflows.sensitivity import run_sensitivity

    t0 = time.time()

    def on_plan(plan) -> None:
        console.print(f"[bold]chanscope sensitivity[/] {study}: {len(plan.seeds)} seed(s), "
                      f"{len(plan.layers)} layers x {len(plan.relevances)} relevances x {len(plan.attacks)} attacks; "
                      f"cost: {plan.passes} attack walks over {plan.n} images and {plan.relevance_passes} relevance "
                      "scorings (walks already in the cache are not made again)")

    df = run_sensitivity(study, out, layers=list(layer) if layer else None,
                         relevances=[r.strip() for r in relevances.split(",") if r.strip()],
                         attacks=[a.strip() for a in attacks.split(",") if a.strip()], n=n, device=device,
                         on_plan=on_plan, say=lambda s: console.print(f"  {s}", highlight=False))
    where = out or study / "sensitivity"
    held = df[(df.verdict == "holds") & ~df.control_inside & df.control_valid]
    cells = len(df[["layer", "relevance", "attack"]].drop_duplicates())
    console.print(f"{cells} cell(s), {len(df)} rows (cell x observation); {len(held)} row(s) hold beyond a valid "
                  f"control ({time.time() - t0:.0f}s). Wrote {where}/sensitivity.csv, sensitivity.md, "
                  "figures/sensitivity.png")
