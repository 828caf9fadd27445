"""A study scale of seconds for tests: the smoke scale's recipe on 100 images of a width-1/16 ResNet-10."""

from __future__ import annotations

from chanscope.scales import SCALES, Scale


def micro_scale(epochs: int = 1, eval_n: int = 20, act_n: int = 20) -> Scale:
    return Scale("micro", "tests", {**SCALES["smoke"].train, "arch": "resnet10", "width": 0.0625, "subset": 100,
                                    "epochs": epochs, "batch_size": 50, "steps": 1, "step_size": 8 / 255,
                                    "eval_n": 20, "eval_steps": 1, "eval_step_size": 2 / 255},
                 eval_attacks="fgsm,pgd2,adaptive2", eval_n=eval_n, aa_n=0, sanity_n=20, act_n=act_n,
                 act_attack="pgd2", square_queries=20)
