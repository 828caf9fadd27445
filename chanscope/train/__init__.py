"""Training: config and presets, and the loop."""

from chanscope.train.config import METHODS, PRESETS, TrainConfig, build_config, config_diff
from chanscope.train.loop import TrainInterrupted, TrainResult, evaluate_subset, load_run_config, train

__all__ = ["TrainConfig", "PRESETS", "METHODS", "build_config", "config_diff", "train", "TrainResult",
           "TrainInterrupted", "evaluate_subset", "load_run_config"]
