"""The activation study of one model on a set of images (the paper's section 3): one walk in batches that
attacks each batch, records per-channel magnitudes of the natural and the adversarial images at every asked
layer, scores each channel's relevance, and returns per layer the channel and class tables with the per-image
arrays that intervals are drawn from. Pure computation; `chanscope.workflows.activations` writes the files."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from chanscope.attacks.suite import AttackSpec, run_attack
from chanscope.observe.analysis import channels_table, classes_table, percent
from chanscope.observe.hooks import ActivationRecorder
from chanscope.observe.relevance import LayerRelevance, RelevanceAccumulator
from chanscope.sharding import ONE_PROCESS

__all__ = ["LayerResult", "study_activations"]


@dataclass
class LayerResult:
    layer: str
    channels: pd.DataFrame
    classes: pd.DataFrame
    # per image, for intervals over images (chanscope.observe.verdicts): y, nat_ok, adv_ok, pred_nat, pred_adv,
    # loss_nat, loss_adv (N,), mag_nat and mag_adv (N, C), relevance (classes, C); the tables above are exact
    # streaming sums of the same numbers
    examples: dict[str, np.ndarray] | None = None


def study_activations(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str], layers: list[str],
                      attack: AttackSpec, *, relevance: str = "gradient", relevance_on: str = "natural",
                      threshold: float = 1e-2, batch_size: int = 250, beta_atk: float = 2.0, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None,
                      sharding=ONE_PROCESS) -> tuple[list[LayerResult], float]:
    """Walk (x, y) once in batches: attack, record both kinds, score relevance; return per-layer tables.

    sharding: `chanscope.sharding.ONE_PROCESS` or `chanscope.accel.distributed` (each torchrun rank a
    contiguous shard; the sums are added over ranks)."""
    dist_util = sharding
    t0 = time.time()
    dev = next(model.parameters()).device
    part = dist_util.shard(len(y))  # each rank a contiguous shard; sums are all-reduced below
    x, y = x[part], y[part]
    k = len(classes)
    rel = {name: RelevanceAccumulator(k) for name in layers}
    kept: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    kept_ok: list[tuple[torch.Tensor, ...]] = []
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        scorers = {name: LayerRelevance(model, name, relevance) for name in layers}
        with ActivationRecorder(model, layers, k, threshold) as rec:
            for i in range(0, len(y), batch_size):
                xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
                robust, _, xa = run_attack(attack, model, xb, yb, beta_atk=beta_atk, seed=seed)
                with torch.no_grad():
                    out_nat, out_adv = model(xb), model(xa)
                nat_pred = out_nat.argmax(1)
                m_nat = rec.observe(xb, yb, "natural")
                m_adv = rec.observe(xa, yb, "adversarial")
                for name in layers:
                    kept.setdefault(name, []).append((m_nat[name].float().cpu(), m_adv[name].float().cpu()))
                kept_ok.append(((nat_pred == yb).cpu(), robust.cpu(), yb.cpu(), nat_pred.cpu(),
                                out_adv.argmax(1).cpu(), F.cross_entropy(out_nat, yb, reduction="none").cpu(),
                                F.cross_entropy(out_adv, yb, reduction="none").cpu()))
                for name in layers:
                    rel[name].update(scorers[name](xb if relevance_on == "natural" else xa, yb), yb)
                if progress:
                    progress(min(len(y), i + batch_size), len(y))
    finally:
        model.train(was_training)
    return _layer_results(rec, rel, kept, kept_ok, classes, layers, dist_util), time.time() - t0


def _layer_results(rec: ActivationRecorder, rel: dict[str, RelevanceAccumulator],
                   kept: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
                   kept_ok: list[tuple[torch.Tensor, ...]], classes: list[str],
                   layers: list[str], dist_util) -> list[LayerResult]:
    """The walk's sums added over ranks, then per layer the channel and class tables and the per-image
    magnitudes (`kept`) with each image's natural and adversarial correctness (`kept_ok`)."""
    k = len(classes)
    for name in layers:
        for kind in ("natural", "adversarial"):
            st = rec.stats[name].get(kind)
            if st is None:  # this rank's shard was empty: it has no statistics to add
                raise RuntimeError("a rank received no images; use fewer ranks than test images")
            dist_util.all_reduce_sum(st.tensors())
        dist_util.all_reduce_sum(rel[name].tensors())
    # nat_ok, adv_ok, y, predictions and cross-entropy natural and adversarial, of every image
    ok = [dist_util.gather_cat(torch.cat(t)).numpy() for t in zip(*kept_ok)]
    count = np.bincount(ok[2], minlength=k)

    def per_class(hit: np.ndarray) -> dict[int, float]:
        hits = np.bincount(ok[2], weights=hit, minlength=k)
        return {c: percent(int(hits[c]), int(count[c])) for c in range(k) if count[c] > 0}

    nat_acc, adv_acc = per_class(ok[0]), per_class(ok[1])
    results = []
    for name in layers:
        s_nat, s_adv = rec.stats[name]["natural"], rec.stats[name]["adversarial"]
        relevance = rel[name].mean().numpy()
        ch = channels_table(name, classes, relevance, s_nat.mean().numpy(), s_adv.mean().numpy(),
                            s_nat.std().numpy(), s_adv.std().numpy(), s_nat.frequency().numpy(),
                            s_adv.frequency().numpy(), s_nat.count.numpy())
        ch = ch[ch.n > 0].reset_index(drop=True)
        mags = [dist_util.gather_cat(torch.cat(t)) for t in zip(*kept[name])]
        examples = {"y": ok[2], "nat_ok": ok[0], "adv_ok": ok[1], "mag_nat": mags[0].numpy(),
                    "mag_adv": mags[1].numpy(), "relevance": relevance.astype(np.float32),
                    "pred_nat": ok[3], "pred_adv": ok[4], "loss_nat": ok[5].astype(np.float32),
                    "loss_adv": ok[6].astype(np.float32)}
        results.append(LayerResult(name, ch, classes_table(ch, nat_acc, adv_acc), examples))
    return results
