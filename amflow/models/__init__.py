"""Backbone wrapper, AM flow, temporal processing adapters and the baselines (DESIGN.md 2)."""
