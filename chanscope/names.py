"""Names the command line shows before it runs anything (option help texts and defaults), kept apart from the
modules that use them so that `chanscope --help` and a bad flag need no torch, pandas or matplotlib. Standard
library only; each name is re-exported by the module it belongs to (shown beside it)."""

from __future__ import annotations

__all__ = ["METHODS", "RELEVANCE_METHODS", "DEFAULT_METHODS", "DEFAULT_BUDGETS"]

# chanscope.train.config: method -> (feature selection of the model, loss the training attack and the update use)
METHODS: dict[str, tuple[str, str]] = {
    "standard": ("none", "ce"),
    "at": ("none", "ce"),
    "trades": ("none", "trades"),
    "cas": ("cas", "joint"),
    "cifs": ("cifs", "joint"),
    "fsr": ("fsr", "fsr"),
}

# chanscope.observe.relevance: how a channel's relevance to a class is scored
RELEVANCE_METHODS = ("gradient", "grad-x-act", "ablation")

# chanscope.workflows.compare: the defences `chanscope compare` trains by default
DEFAULT_METHODS = "at,trades,cas,cifs,fsr"

# chanscope.workflows.series: 1x, 3.1x and 6x the cpu scale's training compute
DEFAULT_BUDGETS = "5000x8x3,10000x10x4,10000x16x5"
