"""``amflow predict``: the top-k classes of video files with a trained run's model (its run folder or its
MLflow model, :mod:`amflow.evaluate.predict`), printed as text, JSON or CSV."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from amflow.errors import AmflowError
from amflow.evaluate.predict import Predictor, read_video_list


def predict(videos: Sequence[Path], *, video_list: Optional[Path], run: Optional[Path], model_uri: Optional[str],
            tracking_uri: Optional[str], backbone: Optional[Path], top_k: Optional[int], fmt: str = "text") -> int:
    """``fmt``: ``text``, ``json`` or ``csv``. Returns 1 when a video could not be classified (the others are)."""
    videos = list(videos) + (read_video_list(video_list) if video_list else [])
    if not videos:
        raise AmflowError("amflow predict: no video given; name one or more video files, or --list FILE "
                          "(one path per line)")
    if model_uri:
        from amflow.evaluate.mlflow_model import load_predictor  # imports mlflow (slow): only for --model-uri

        predictor = load_predictor(model_uri, backbone=backbone, tracking_uri=tracking_uri)
    else:
        predictor = Predictor.from_run_dir(run, backbone=backbone)
    top_k = predictor.check_top_k(top_k)  # before decoding any video
    results, failed = [], 0
    for video in videos:
        try:
            results.append((str(video), predictor.predict(video, top_k)))
        except (AmflowError, FileNotFoundError) as exc:  # one bad video does not stop the others
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    if fmt == "json":
        print(json.dumps([{"video": v, "predictions": [{"rank": r, "label": n, "probability": p}
                                                       for r, (n, p) in enumerate(top, start=1)]}
                          for v, top in results], indent=2))
    elif fmt == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["video", "rank", "label", "probability"])
        out.writerows([v, r, n, f"{p:.6f}"] for v, top in results for r, (n, p) in enumerate(top, start=1))
    else:
        for v, top in results:
            indent = ""
            if len(videos) > 1:
                print(f"{v}:")
                indent = "  "
            for name, prob in top:
                print(f"{indent}{prob:7.2%}  {name}")
    return 1 if failed else 0
