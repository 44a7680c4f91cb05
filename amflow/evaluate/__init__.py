"""Evaluation: multi-view testing, metrics, prediction."""
