"""Reusable option types (huggingface_hub's _cli_utils pattern)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: cuda if available)")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed.")]
DataOpt = Annotated[Optional[str], typer.Option(
    help="embedded (default), cifar10, svhn, fashion-mnist, an ImageFolder folder, or a .tar.gz/.zip of one.")]
DataRootOpt = Annotated[Optional[str], typer.Option(help="Folder of torchvision's data sets (for named data).")]
DownloadOpt = Annotated[Optional[bool], typer.Option("--download", help="Let torchvision download named data.")]
EpsOpt = Annotated[Optional[str], typer.Option(help="L-inf budget in pixel units, e.g. 8/255.")]
ClassesByOpt = Annotated[str, typer.Option(
    help="How the data's labels meet the model's classes: name (the names the checkpoint records must match; "
    "another order is mapped) or position (label i is the model's class i, rows get the model's names).")]
