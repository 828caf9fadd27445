"""Reusable option types (huggingface_hub's _cli_utils pattern)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: cuda if available)")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed.")]
DataOpt = Annotated[Optional[str], typer.Option(
    help="embedded (default), cifar10, svhn, fashion-mnist, an ImageFolder folder, or a .tar.gz/.zip of one.")]
DataRootOpt = Annotated[Optional[str], typer.Option(help="Folder of torchvision's data sets (for named data).")]
DownloadOpt = Annotated[Optional[bool], typer.Option("--download", help="Let torchvision download named data.")]
EpsOpt = Annotated[Optional[str], typer.Option(
    help="Budget in the threat model's units on [0,1] images (default: 8/255 under linf, 0.5 under l2).")]
ThreatOpt = Annotated[Optional[str], typer.Option(
    "--threat-model", help="linf or l2 (default: the run's own, else linf); --eps is in its units. "
    "For robustbench: models, also the zoo folder (Linf, L2).")]
StudyThreatOpt = Annotated[Optional[str], typer.Option(
    "--threat-model", help="linf or l2 for every training and attack of the study (L2 at eps 0.5; default: the "
    "folder's, else linf).")]


def budget(eps: float, threat_model: str) -> str:
    """A budget as a reader expects it: 8.0/255 under L-inf, 0.500 under L2."""
    return f"{eps * 255:.1f}/255" if threat_model == "linf" else f"{eps:.3f}"
ClassesByOpt = Annotated[str, typer.Option(
    help="How the data's labels meet the model's classes: name (the names the checkpoint records must match; "
    "another order is mapped) or position (label i is the model's class i, rows get the model's names).")]
TimeLimitOpt = Annotated[Optional[float], typer.Option(
    help="Minutes: start no new stage after this; what is done is kept (and reported), a rerun continues.")]
Bf16Opt = Annotated[Optional[bool], typer.Option(
    "--bf16/--no-bf16", help="bf16 autocast of the training stages (default: CUDA only; on a CPU with AMX --bf16 "
    "about halves them); evaluation stays float32.")]

# where a model comes from (chanscope.models.sources): shared by eval, activations and layers
ModelOpt = Annotated[str, typer.Option(
    help="A checkpoint or run folder (chanscope's or the official CIFS/CAS code's), torchvision:NAME, timm:NAME, "
    "robustbench:NAME, a TorchScript or .pt2 file, or package.module:callable.")]
WeightsOpt = Annotated[Optional[str], typer.Option(help="state_dict file for torchvision:, timm: or a factory.")]
NumClassesOpt = Annotated[Optional[int], typer.Option(help="Head size of torchvision:/timm: models (default: the "
                                                            "data's class count).")]
DatasetOpt = Annotated[str, typer.Option(help="robustbench: cifar10, cifar100 or imagenet.")]
ThreatModelOpt = Annotated[str, typer.Option(help="robustbench: Linf, L2 or corruptions.")]
ModelDirOpt = Annotated[str, typer.Option(help="robustbench: the model zoo folder (<dir>/<dataset>/<threat>/NAME.pt).")]
MeanOpt = Annotated[Optional[str], typer.Option(help="Per-channel mean the model expects, e.g. 0.4914,0.4822,0.4465 "
                                                     "(with --std; the model then takes [0, 1] images).")]
StdOpt = Annotated[Optional[str], typer.Option(help="Per-channel std the model expects (with --mean).")]


def model_options(weights: str | None, num_classes: int | None, dataset: str, threat_model: str | None, model_dir: str,
                  mean: str | None, std: str | None):
    """The flags of a model source as the library's ModelOptions."""
    from chanscope.errors import ChanscopeError
    from chanscope.models.sources import ModelOptions

    def floats(text: str | None, flag: str) -> list[float] | None:
        if text is None:
            return None
        try:
            return [float(v) for v in text.split(",")]
        except ValueError:
            raise ChanscopeError(f"{flag} {text!r} is not a comma-separated list of numbers, e.g. 0.5,0.5,0.5"
                                 ) from None

    zoo = {"linf": "Linf", "l2": "L2"}.get(str(threat_model).lower(), threat_model) if threat_model else "Linf"
    return ModelOptions(weights=weights, num_classes=num_classes, dataset=dataset, threat_model=zoo,
                        model_dir=model_dir, mean=floats(mean, "--mean"), std=floats(std, "--std"))


_SOURCE_FLAGS = (("weights", WeightsOpt, None), ("num_classes", NumClassesOpt, None),
                 ("dataset", DatasetOpt, "cifar10"), ("threat_model", ThreatModelOpt, "Linf"),
                 ("model_dir", ModelDirOpt, "models"), ("mean", MeanOpt, None), ("std", StdOpt, None))


def with_model_source(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command that takes `model_options` the model-source flags (--weights ... --std) after its own,
    and pass them to it as one ModelOptions."""
    # the annotations of the command's own flags, evaluated here; `model_options`'s is left a string, so a command
    # module can import ModelOptions (and torch) for type checkers only, not when the CLI starts
    own = inspect.signature(command)
    names = command.__globals__

    def evaluated(annotation: Any) -> Any:
        return eval(annotation, names) if isinstance(annotation, str) else annotation

    # a command with a --threat-model of its own (the attacks') shares it with RobustBench's zoo folder
    flags = [f for f in _SOURCE_FLAGS if f[0] not in own.parameters]
    params = [p.replace(annotation=evaluated(p.annotation)) for p in own.parameters.values()
              if p.name != "model_options"]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
               for name, kind, default in flags]

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        source = {name: kwargs.pop(name) for name, _, _ in flags}
        source.setdefault("threat_model", kwargs.get("threat_model"))
        return command(**kwargs, model_options=model_options(**source))

    # what Typer reads (the signature, and typing.get_type_hints of the annotations)
    run.__signature__ = own.replace(parameters=params, return_annotation=evaluated(own.return_annotation))
    run.__annotations__ = {p.name: p.annotation for p in params} | {"return": run.__signature__.return_annotation}
    return run
