"""Training: backbones registry, feature cache, trainer, runs."""
