"""The pipeline's stages: one module per ``amflow`` command, named after it (``amflow camera-motion`` ->
:mod:`amflow.stages.camera_motion`). A stage reads its inputs, calls the libraries and writes its outputs;
only :mod:`amflow.cli` imports a stage, and no stage imports another (tests/test_imports.py)."""
