"""`chanscope plot ...` and `chanscope report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._console import console, handle_errors

app = typer.Typer(no_args_is_help=True, help="The paper's figures from run folders (PNG, PDF and CSV).")
RunsOpt = Annotated[list[Path], typer.Option("--run", help="Run folder (repeat for several models).")]
LayerRunsOpt = Annotated[list[Path], typer.Option("--run", help="Run folder (repeat for several models); of a run "
                                                   "that recorded several layers, one layer's channels-<layer>.csv.")]
OutOpt = Annotated[Path, typer.Option(help="Folder for the PNG, PDF and CSV.")]


def _done(name: str, out: Path) -> None:
    console.print(f"wrote {out / name}.png, .pdf and .csv")


@app.command("nr-channels")
@handle_errors
def nr_channels_cmd(run: LayerRunsOpt, out: OutOpt = Path("figures"),
                    class_name: Annotated[Optional[str], typer.Option("--class", help="One class (default: all).")]
                    = None,
                    raw: Annotated[bool, typer.Option("--raw", help="Raw magnitudes (no per-model scaling).")]
                    = False) -> None:
    """Channels sorted by relevance vs natural and adversarial magnitude, NR region shaded."""
    from chanscope.workflows import plots

    plots.nr_channels(run, out, class_name, normalize=not raw)
    _done("nr_channels", out)


@app.command("class-alignment")
@handle_errors
def class_alignment_cmd(run: Annotated[Path, typer.Option(help="Run folder.")], out: OutOpt = Path("figures"),
                        classes: Annotated[Optional[str], typer.Option(help="Comma list (default: most and least "
                                                                            "robust).")] = None) -> None:
    """Magnitude against relevance for the most and least robust class, Spearman in the titles."""
    from chanscope.workflows import plots

    plots.class_alignment(run, out, classes.split(",") if classes else None)
    _done("class_alignment", out)


@app.command("class-robustness")
@handle_errors
def class_robustness_cmd(run: RunsOpt, out: OutOpt = Path("figures"),
                         attack: Annotated[Optional[str], typer.Option(help="Attack of eval.csv (default: first "
                                                                            "PGD).")] = None) -> None:
    """Per-class natural and robust accuracy, models side by side."""
    from chanscope.workflows import plots

    plots.class_robustness(run, out, attack)
    _done("class_robustness", out)


@app.command("training")
@handle_errors
def training_cmd(run: RunsOpt, out: OutOpt = Path("figures"),
                 name: Annotated[str, typer.Option(help="File name (without extension).")] = "training") -> None:
    """Loss, training and test accuracy per epoch."""
    from chanscope.workflows import plots

    plots.training_curves(run, out, name=name)
    _done(name, out)


@handle_errors
def report_command(run: RunsOpt, out: Annotated[Path, typer.Option(help="Markdown file.")] = Path("report.md"),
                   figures: Annotated[Optional[Path], typer.Option(help="Folder of figures to embed.")] = None) -> None:
    """One markdown report: configs, evaluation, alignment tables, the paper's observations, figures."""
    for r in run:
        if not Path(r).is_dir():
            from chanscope.errors import ChanscopeError

            raise ChanscopeError(f"run folder {str(r)!r} does not exist")
    from chanscope.workflows.report import write_report

    write_report(run, out, figures)
    console.print(f"wrote {out}")
