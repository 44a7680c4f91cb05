"""Datasets: generation (SynthMotion), download and parsing of real datasets, frame cache, clips."""
