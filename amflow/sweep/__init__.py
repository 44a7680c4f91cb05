"""Optuna sweeps over the adapter hyperparameters."""
