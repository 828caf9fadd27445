"""`chanscope activations`: one pass over the test set, natural and adversarial statistics of the same
images, relevance per class, and the alignment tables."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
import torch.nn as nn

from chanscope.analysis import channels_table, classes_table
from chanscope.attacks.suite import AttackSpec, run_attack
from chanscope.hooks import ActivationRecorder
from chanscope.relevance import RelevanceAccumulator, relevance_scores

__all__ = ["study_activations", "LayerResult"]


@dataclass
class LayerResult:
    layer: str
    channels: pd.DataFrame
    classes: pd.DataFrame


def study_activations(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str], layers: list[str],
                      attack: AttackSpec, *, relevance: str = "gradient", relevance_on: str = "natural",
                      threshold: float = 1e-2, batch_size: int = 250, beta_atk: float = 2.0, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> tuple[list[LayerResult], float]:
    """Walk (x, y) once in batches: attack, record both kinds, score relevance; return per-layer tables."""
    t0 = time.time()
    dev = next(model.parameters()).device
    k = len(classes)
    rel = {name: RelevanceAccumulator(k) for name in layers}
    nat_ok = torch.zeros(k, dtype=torch.float64)
    adv_ok = torch.zeros(k, dtype=torch.float64)
    count = torch.zeros(k, dtype=torch.float64)
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with ActivationRecorder(model, layers, k, threshold) as rec:
            for i in range(0, len(y), batch_size):
                xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
                robust, _, xa = run_attack(attack, model, xb, yb, beta_atk=beta_atk, seed=seed)
                with torch.no_grad():
                    nat_pred = model(xb).argmax(1)
                rec.observe(xb, yb, "natural")
                rec.observe(xa, yb, "adversarial")
                yc = yb.cpu()
                count.index_add_(0, yc, torch.ones(len(yc), dtype=torch.float64))
                nat_ok.index_add_(0, yc, (nat_pred == yb).double().cpu())
                adv_ok.index_add_(0, yc, robust.double().cpu())
                for name in layers:
                    rel[name].update(relevance_scores(model, name, xb if relevance_on == "natural" else xa, yb,
                                                      relevance), yb)
                if progress:
                    progress(min(len(y), i + batch_size), len(y))
    finally:
        model.train(was_training)
    n = count.clamp_min(1)
    nat_acc = {c: 100.0 * float(nat_ok[c] / n[c]) for c in range(k) if count[c] > 0}
    adv_acc = {c: 100.0 * float(adv_ok[c] / n[c]) for c in range(k) if count[c] > 0}
    results = []
    for name in layers:
        s_nat, s_adv = rec.stats[name]["natural"], rec.stats[name]["adversarial"]
        ch = channels_table(name, classes, rel[name].mean().numpy(), s_nat.mean().numpy(), s_adv.mean().numpy(),
                            s_nat.std().numpy(), s_adv.std().numpy(), s_nat.frequency().numpy(),
                            s_adv.frequency().numpy(), s_nat.count.numpy())
        ch = ch[ch.n > 0].reset_index(drop=True)
        results.append(LayerResult(name, ch, classes_table(ch, nat_acc, adv_acc)))
    return results, time.time() - t0
