"""Training, the core: the config and its presets, the methods, one epoch. Fitting a model into a run folder
is the workflow `chanscope.workflows.training.fit`."""

from chanscope.train.config import METHODS, TrainConfig, build_config, config_diff
from chanscope.train.epoch import train_one_epoch
from chanscope.train.methods import Method, method_for

__all__ = ["TrainConfig", "METHODS", "build_config", "config_diff", "train_one_epoch", "Method",
           "method_for"]
