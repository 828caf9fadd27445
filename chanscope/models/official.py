"""Import checkpoints saved by the public CIFS code (GitHub HanshuYAN/CIFS) and FSR code (GitHub wkim97/FSR).

That code saves `{'state_dict', 'stop_epoch', 'optimizer'}` for three ResNet-18 variants that take
[0, 1] inputs with no normalisation: `resnet_.ResNet18` (plain), `resnet_CIFS.ResNet18_L4` (CIFS on
layer4, probes nonlinear then linear) and `resnet_CAS.ResNet18_L4` (CAS on layer4). We detect the
variant from the keys, build the equivalent chanscope model and rename the keys; every key and shape
must be used exactly once. The FSR code saves `net.state_dict()` of `ResNet18_FSR` (tau 0.1, [0, 1] inputs).
"""

from __future__ import annotations

import re

import torch

from chanscope.errors import ChanscopeError
from chanscope.models._registry import create_model

__all__ = ["is_official_state_dict", "official_model_kwargs", "convert_official_state_dict", "load_official"]


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def is_official_state_dict(sd: dict) -> bool:
    keys = set(_strip(sd))
    return "linear.weight" in keys and "conv1.weight" in keys and "normalize.mean" not in keys


def official_model_kwargs(sd: dict[str, torch.Tensor]) -> dict:
    sd = _strip(sd)
    num_classes, feat = sd["linear.weight"].shape
    in_channels = sd["conv1.weight"].shape[1]
    width = sd["conv1.weight"].shape[0] / 64
    kw: dict = {"num_classes": int(num_classes), "in_channels": int(in_channels), "width": width}
    if any(".Probe.Probe." in k for k in sd):
        probes = []
        for i in range(2):
            probes.append("nonlinear" if f"layer4.{i}.Probe.Probe.0.fc.weight" in sd else "linear")
        kw.update(feature_select="cifs", probes=probes)
    elif "separation.sep_net.0.weight" in sd:  # FSR's official ResNet18_FSR (GitHub wkim97/FSR): after layer4
        kw.update(feature_select="fsr")
    elif any(".CAS.fc." in k for k in sd):
        if "CAS.fc.weight" in sd:
            raise ChanscopeError("this official checkpoint puts CAS after the whole layer4 (resnet_.py "
                                 "variant with self.CAS); only the ResNet18_L4 CAS variant is supported")
        kw.update(feature_select="cas")
    return kw


def convert_official_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official keys to chanscope keys (and add the identity Normalize buffers)."""
    sd = _strip(sd)
    out: dict[str, torch.Tensor] = {}
    if "separation.sep_net.0.weight" in sd:
        return _convert_fsr(sd)
    selected = any(".Probe." in q or ".CAS." in q for q in sd)  # layer4 blocks become SelectBlocks
    for k, v in sd.items():
        m = re.match(r"^layer4\.(\d+)\.(.*)$", k)
        nk = k
        if m and selected:
            i, rest = m.groups()
            if rest.startswith("Probe.Probe.0.fc."):
                nk = f"layer4.{i}.select.probe.1.{rest.split('.')[-1]}"
            elif rest.startswith("Probe.Probe.1."):
                nonlinear = f"layer4.{i}.Probe.Probe.0.fc.weight" in sd
                nk = f"layer4.{i}.select.probe.{3 if nonlinear else 1}.{rest.split('.')[-1]}"
            elif rest.startswith("CAS.fc."):
                nk = f"layer4.{i}.select.fc.{rest.split('.')[-1]}"
            else:
                nk = f"layer4.{i}.block.{rest}"
        out[nk] = v
    c = sd["conv1.weight"].shape[1]
    out["normalize.mean"] = torch.zeros(1, c, 1, 1)
    out["normalize.std"] = torch.ones(1, c, 1, 1)
    return out


def _convert_fsr(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ResNet18_FSR keys: the FSR module (separation, recalibration, the shared aux head) sits after layer4,
    which in chanscope is the selector of layer4's last block."""
    last = max(int(k.split(".")[1]) for k in sd if k.startswith("layer4."))
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        nk = k
        if k.startswith(f"layer4.{last}."):
            nk = f"layer4.{last}.block." + k[len(f"layer4.{last}."):]
        elif k.startswith("separation.sep_net."):
            nk = f"layer4.{last}.select.sep_net." + k[len("separation.sep_net."):]
        elif k.startswith("recalibration.rec_net."):
            nk = f"layer4.{last}.select.rec_net." + k[len("recalibration.rec_net."):]
        elif k.startswith("aux.0."):
            nk = f"layer4.{last}.select.aux." + k[len("aux.0."):]
        out[nk] = v
    c = sd["conv1.weight"].shape[1]
    out["normalize.mean"] = torch.zeros(1, c, 1, 1)
    out["normalize.std"] = torch.ones(1, c, 1, 1)
    return out


def load_official(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Build the chanscope model for an official state_dict and load it strictly."""
    kw = official_model_kwargs(sd)
    model = create_model("resnet18", **kw)
    converted = convert_official_state_dict(sd)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ChanscopeError(f"official checkpoint does not map onto resnet18 ({len(missing)} missing keys, "
                             f"e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    model.source = ("official FSR code (wkim97/FSR)" if kw.get("feature_select") == "fsr"
                    else "official CIFS code (HanshuYAN/CIFS)")
    return model
