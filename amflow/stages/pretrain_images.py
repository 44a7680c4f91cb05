"""``amflow pretrain-images``: render the single-image pretraining set (:mod:`amflow.data.pretrain_images`)
into ``data/pretrain_images-<spec>/``, in worker processes, ``info.json`` last."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from amflow import io, parallel, paths, progress
from amflow.data import scene
from amflow.data.pretrain_images import (ATTRIBUTES, CHUNK, GENERATOR_VERSION, SPLITS, images_path, labels_path,
                                         multi_label, read_info, render_chunk)
from amflow.errors import AmflowError
from amflow.params import Params, PretrainImagesSpec


def _class_counts(labels: np.ndarray, classes: int, multi: bool) -> list[int]:
    """Images per class: of the class index, or (bit masks) of the images whose set holds the class."""
    if multi:
        return [int(((labels >> k) & 1).sum()) for k in range(classes)]
    return np.bincount(labels, minlength=classes).tolist()


def _recorded_spec(spec: PretrainImagesSpec) -> dict:
    """The spec as recorded in info.json: without ``workers``, which does not change the bytes."""
    return spec.model_dump(mode="json", exclude={"workers"})


def _is_complete(out_dir: Path, spec: PretrainImagesSpec) -> bool:
    try:
        info = read_info(out_dir)
    except (FileNotFoundError, ValueError):
        return False
    return (info.get("spec") == _recorded_spec(spec) and info.get("generator_version") == GENERATOR_VERSION
            and all(images_path(out_dir, s).is_file() and labels_path(out_dir, s).is_file() for s in SPLITS))


def generate_pretrain_images(params: Params, out_dir: str | Path) -> dict:
    """Render ``params.pretrain_images`` into ``out_dir``; ``info.json`` last. Returns its content.

    Nothing is done when ``info.json`` records the same spec and generator version.
    """
    spec = params.pretrain_images
    if spec is None:
        raise AmflowError("pretrain_images: section missing from the params file; add e.g. "
                          "`pretrain_images: {images: 30000, val_images: 2000, resolution: 32}`")
    out_dir = Path(out_dir)
    if _is_complete(out_dir, spec):
        print(f"{out_dir}: pretraining images already generated with this spec; nothing to do", file=sys.stderr)
        return read_info(out_dir)
    (out_dir / paths.PRETRAIN_IMAGES_INFO).unlink(missing_ok=True)

    counts = {"train": spec.images, "val": spec.val_images}
    multi = multi_label(scene.scene_style(spec.difficulty, spec.resolution))
    spec_dict = spec.model_dump(mode="json")
    tasks = {s: [(spec_dict, s, a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)] for s, n in counts.items()}
    workers = parallel.worker_count(spec.workers, sum(len(t) for t in tasks.values()))
    res = spec.resolution
    class_counts: dict = {}
    t0 = time.perf_counter()
    bar = progress.bar(total=sum(counts.values()), desc="pretrain images", unit="img")
    pool = parallel.spawn_pool(workers, initializer=parallel.one_opencv_thread) if workers > 1 else None
    try:
        for split in SPLITS:
            rows: list[dict] = [None] * counts[split]  # type: ignore[list-item]
            with io.atomic_path(images_path(out_dir, split)) as tmp:
                images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(counts[split], res, res, 3))
                results = pool.imap(render_chunk, tasks[split]) if pool else map(render_chunk, tasks[split])
                for start, chunk, chunk_rows in results:
                    images[start:start + len(chunk)] = chunk
                    rows[start:start + len(chunk)] = chunk_rows
                    bar.update(len(chunk))
                images.flush()
                del images
            table = pd.DataFrame(rows)
            with io.atomic_path(labels_path(out_dir, split)) as tmp:
                table.to_csv(tmp, index_label="index")
            class_counts[split] = {a: _class_counts(table[a].to_numpy(), len(n), multi) for a, n in ATTRIBUTES.items()}
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    elapsed = time.perf_counter() - t0

    info = {
        "source": "synthmotion-stills",
        "generator_version": GENERATOR_VERSION,
        "spec": _recorded_spec(spec),
        "resolution": res,
        "difficulty": spec.difficulty,
        "attributes": [{"name": a, "classes": len(n), "names": list(n), "multi_label": multi}
                       for a, n in ATTRIBUTES.items()],
        "counts": counts,
        "class_counts": class_counts,
        "files": {s: {"images": images_path(out_dir, s).name, "labels": labels_path(out_dir, s).name} for s in SPLITS},
    }
    io.write_json(out_dir / paths.PRETRAIN_IMAGES_INFO, info)
    total = sum(counts.values())
    print(f"{out_dir}: {total} images in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} img/s, "
          f"{workers} worker(s))", file=sys.stderr)
    return info
