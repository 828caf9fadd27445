"""`chanscope layers`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from ._console import console
from ._options import (
    DataOpt,
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    ModelOpt,
    with_model_source,
)

if TYPE_CHECKING:  # torch: the workflow is imported when the command runs, not when the CLI starts
    from chanscope.models.sources import ModelOptions


@with_model_source
def layers_command(
    model: ModelOpt,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = None,
    device: DeviceOpt = None,
    model_options: ModelOptions | None = None,
) -> None:
    """List a model's layers with output shapes and channel counts on one batch (to pick --layer)."""
    from chanscope.workflows.layers import model_layers

    rows, info = model_layers(model, data=data, data_root=data_root, download=bool(download), device=device,
                              model_options=model_options)
    src = info["source"] or {}
    table = Table(title=f"{model} ({src.get('source', '?')}; input {info['input']} from {info['data']}; "
                        f"normalisation: {src.get('normalisation', '?')})")
    for col in ("layer", "type", "output", "channels", "calls"):
        table.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for r in rows:
        name = f"[bold]{r['layer']}[/] (default)" if r["default"] else r["layer"]
        table.add_row(name, r["type"], "x".join(map(str, r["output"])) if r["output"] else "-",
                      str(r["channels"]) if r["channels"] is not None else "-", str(r["calls"]))
    console.print(table)
    console.print("a layer with channels that runs once per forward can be studied: chanscope activations "
                  f"--model {model} --layer NAME (NAME:in for a module's input)", highlight=False)
