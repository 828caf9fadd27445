"""Attacks on models that map [0, 1] images to logits. One PGD loop serves training and evaluation."""

from chanscope.attacks.pgd import LOSSES, attack_loss, frozen_eval, pgd

__all__ = ["pgd", "attack_loss", "frozen_eval", "LOSSES"]
