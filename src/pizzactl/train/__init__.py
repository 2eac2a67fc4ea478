"""Training: backbones registry, feature cache, trainer, runs.

`train(settings)` is what `pizzactl train` runs; a notebook can call it the same way:

    from pizzactl.config import load_settings
    from pizzactl.train import train
    result = train(load_settings({"data_dir": "data/pizza_not_pizza", "backbone": "efficientnet_lite0"}))
    result.best.metrics["val_accuracy"], result.model_dir

Nothing here imports TensorFlow at import time (the trainer imports it inside its functions).
"""

from pizzactl.train.trainer import RunResult, TrainResult, print_result, train

__all__ = ["RunResult", "TrainResult", "print_result", "train"]
