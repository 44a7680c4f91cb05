"""Code of the runs' MLflow model ("models from code": MLflow runs this file to load the model, so no
pickled object is stored). The model itself is :class:`amflow.evaluate.mlflow_model.VideoClassifier`."""
from mlflow.models import set_model

from amflow.evaluate.mlflow_model import VideoClassifier

set_model(VideoClassifier())
