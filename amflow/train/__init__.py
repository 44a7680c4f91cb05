"""Backbone pretraining, the trainer, checkpoints and distributed training."""
