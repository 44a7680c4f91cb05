"""``amflow extract``: decode every video of a prepared dataset into the sharded frame cache.

Videos are decoded in parallel worker processes (ordered, so the cache is byte-for-byte the same
whatever the worker count) and written by this process into shards (see
:mod:`amflow.data.frame_cache`). A video that fails to decode is listed in ``failures.csv``,
skipped and counted; a decoder that crashes its process (a segfault in a C library) is retried
alone and then listed the same way, so one bad file never stops or hangs the stage.
Everything is written into a temporary folder renamed onto ``frames/`` at the end, with
``summary.json`` last: an interrupted run leaves no cache that looks complete.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterator, Optional

import pandas as pd
from amflow import io, parallel, progress
from amflow.data import annotations as ann
from amflow.data.frame_cache import FAILURES, FORMAT_VERSION, SUMMARY, CacheBuilder
from amflow.data.frame_codec import decode_video_task, init_worker
from amflow.data.sources.base import subsample
from amflow.data.video import resolve_backend
from amflow.errors import AmflowError
from amflow.params import SPLITS, DatasetBase, Params


def extract_frames(params: Params, dataset_name: str, dataset_dir: str | Path, frames_dir: str | Path,
                   workers: int = 0) -> dict:
    """Build ``frames_dir`` from ``dataset_dir``; returns the summary. Nothing to do if already complete.

    Workers are fresh processes (forkserver or spawn), which run the calling script's top level
    again: a script calling this must guard its entry point with ``if __name__ == "__main__":``.
    """
    spec = params.dataset(dataset_name)
    dataset_dir, frames_dir = Path(dataset_dir), Path(frames_dir)
    tables, capped = _read_splits(dataset_dir, spec)
    cache_params = _cache_params(spec)
    fingerprint = {"format_version": FORMAT_VERSION, "params": cache_params,
                   "annotations_sha256": {s: io.file_digest(ann.annotations_path(dataset_dir, s)) for s in tables}}

    done = _complete_summary(frames_dir)
    if done is not None and all(done.get(k) == v for k, v in fingerprint.items()):
        print(f"{frames_dir}: frame cache is complete for these params and annotations; nothing to do",
              file=sys.stderr)
        return done
    _warn_stale_temporaries(frames_dir)

    tasks = _tasks(dataset_dir, tables)
    backend = resolve_backend()
    workers = parallel.worker_count(workers, len(tasks))
    t0 = time.perf_counter()
    stats = {s: {"listed": len(t), "decoded": 0, "failed": 0, "frames": 0} for s, t in tables.items()}

    with io.atomic_path(frames_dir) as tmp:
        tmp.mkdir()
        builder = CacheBuilder(tmp, spec.encoding, spec.shard_frames, spec.jpeg_quality)
        job = (spec.short_side, spec.encoding, spec.jpeg_quality, backend)
        first_result = _decode_all(builder, tasks, job, workers, stats, f"extract {dataset_name}", t0)

        dead = [s for s, st in stats.items() if st["listed"] and not st["decoded"]]
        if dead:
            examples = "; ".join(f["error"] for f in builder.failures if f["split"] in dead)[:600]
            raise AmflowError(f"{dataset_dir}: every video of split(s) {', '.join(dead)} failed to decode, so no "
                              f"frame cache was written. First errors: {examples}. Check the files listed in "
                              f"{ann.annotations_path(dataset_dir, dead[0])} (missing download? wrong 'root'?)")
        summary = builder.finish({**fingerprint, "dataset": dataset_name, "splits": stats,
                                  "seconds": round(time.perf_counter() - t0, 3),
                                  "seconds_to_first_video": round(first_result, 3), "workers": workers,
                                  "backend": backend, "capped": capped})

    failed = summary["failed"]
    print(f"{frames_dir}: {summary['videos']} videos, {summary['frames']} frames in {summary['shards']} shard(s), "
          f"{failed} failed" + (f" (listed in {frames_dir / FAILURES})" if failed else ""), file=sys.stderr)
    return summary


def _decode_all(builder: CacheBuilder, tasks: list[dict], job: tuple, workers: int, stats: dict, desc: str,
                t0: float) -> float:
    """Decode every task in worker processes and add it, in order, to ``builder``; updates ``stats``.

    Returns the seconds from ``t0`` to the first finished video (worker start-up, for the summary).
    """
    first_result = 0.0
    # Workers hand frames over in files (in $TMPDIR, usually node-local), not through pipes.
    with tempfile.TemporaryDirectory(prefix="amflow-extract-", ignore_cleanup_errors=True) as parts:
        results = OrderedMap(decode_video_task, [(t["path"], *job, os.path.join(parts, f"{i:08d}.bin"))
                                                 for i, t in enumerate(tasks)], workers, init_worker)
        bar = progress.bar(total=len(tasks), desc=desc, unit="video")
        try:
            for task, res in zip(tasks, results):
                first_result = first_result or time.perf_counter() - t0
                split = task["split"]
                if "error" in res:
                    builder.add_failure(task["video"], split, res["error"])
                    stats[split]["failed"] += 1
                else:
                    builder.add_encoded(task["video_id"], split, task["label"], task["video"], res["blob"],
                                        res["lengths"], res["checksums"], res["height"], res["width"], res["fps"])
                    os.unlink(res["blob"])
                    stats[split]["decoded"] += 1
                    stats[split]["frames"] += len(res["lengths"])
                bar.update(1)
                bar.set_postfix(failed=len(builder.failures), refresh=False)
        except BaseException:
            builder.abort()
            raise
        finally:
            results.close()  # stops the worker processes, also on an error or Ctrl-C
            bar.close()
    return first_result


# --------------------------------------------------------------------------- inputs
def _cache_params(spec: DatasetBase) -> dict:
    """The DatasetBase fields that determine the cache's content (and so whether a rerun must redo it)."""
    return {"short_side": spec.short_side, "encoding": spec.encoding,
            "jpeg_quality": spec.jpeg_quality if spec.encoding == "jpeg" else None,
            "shard_frames": spec.shard_frames,
            "max_videos": dict(spec.max_videos) if spec.max_videos else None,
            "split_seed": spec.split_seed if spec.max_videos else None}


def _read_splits(dataset_dir: Path, spec: DatasetBase) -> tuple[dict[str, pd.DataFrame], dict]:
    """Annotations of every split present; ``max_videos`` applied here if prepare has not done it."""
    tables, capped = {}, {}
    for split in SPLITS:
        if ann.annotations_path(dataset_dir, split).exists():
            tables[split] = ann.read_annotations(dataset_dir, split)
    if not tables:
        raise AmflowError(f"{dataset_dir / 'annotations'}: no annotation files ({', '.join(SPLITS)}.csv); "
                          "run `amflow prepare` for this dataset first")
    for split, cap in (spec.max_videos or {}).items():
        table = tables.get(split)
        if table is not None and len(table) > cap:
            # `amflow prepare` normally applies the cap already; for annotations written some other way,
            # the same seeded subset that prepare would draw (annotation files are often sorted by class).
            tables[split] = subsample(table, cap, spec.split_seed, split)
            capped[split] = {"listed": len(table), "kept": cap, "split_seed": spec.split_seed}
    return tables, capped


def _tasks(dataset_dir: Path, tables: dict[str, pd.DataFrame]) -> list[dict]:
    tasks, seen = [], {}
    for split, table in tables.items():
        for video, label in zip(table["video"].astype(str), table["label"].astype(int)):
            video_id = Path(video).with_suffix("").as_posix()
            if video_id in seen:
                raise AmflowError(f"{dataset_dir}: video '{video}' is listed twice (splits {seen[video_id]} and "
                                  f"{split}); each video must appear once across the annotation files")
            seen[video_id] = split
            tasks.append({"split": split, "video": video, "video_id": video_id, "label": label,
                          "path": str(ann.resolve_video(dataset_dir, video))})
    return tasks


def _complete_summary(frames_dir: Path) -> Optional[dict]:
    try:
        return io.read_json(frames_dir / SUMMARY)
    except (FileNotFoundError, ValueError):
        return None


def _warn_stale_temporaries(frames_dir: Path) -> None:
    stale = io.temporaries(frames_dir.parent, frames_dir.name)
    if stale:
        print(f"note: {len(stale)} leftover temporary folder(s) from an interrupted extraction: "
              f"{', '.join(str(s) for s in stale)}; delete them to free the space", file=sys.stderr)


# --------------------------------------------------------------------------- workers
def _worker_context():
    """Fresh worker processes, never a fork of this one (unsafe with threads: tqdm, torch, OpenMP).

    A forkserver that has already imported the decoding libraries starts workers in milliseconds;
    spawn (a fresh interpreter per worker) where the platform has no forkserver.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["amflow.data.frame_codec"])
    return ctx


class OrderedMap:
    """``fn`` over ``items`` in worker processes; yields results in input order with a bounded backlog.

    Unlike ``Pool.imap``, a worker killed by a crash in native code does not hang the run: the lost
    items are retried one at a time in a fresh process, and an item that crashes again yields
    ``{"error": ...}``. ``close()`` (also on garbage collection) stops the workers.
    """

    def __init__(self, fn: Callable, items: list, workers: int, initializer: Optional[Callable] = None):
        self.fn, self.items, self.workers, self.initializer = fn, items, workers, initializer
        self.ctx = _worker_context()
        self._gen = self._run()

    def __iter__(self) -> Iterator:
        return self._gen

    def __next__(self):
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=self.ctx, initializer=self.initializer)

    def _run(self) -> Iterator:
        pool = self._pool(self.workers)
        pending: deque = deque()
        todo = iter(self.items)
        backlog = 2 * self.workers  # finished items wait here in order: bounds memory and part files
        try:
            while True:
                for item in todo:
                    fut = self._submit(pool, item)
                    pending.append((item, fut))
                    if fut is None or len(pending) >= backlog:
                        break
                if not pending:
                    return
                item, fut = pending.popleft()
                try:
                    if fut is None:  # a worker died while items were being submitted
                        raise BrokenProcessPool("the pool broke before this item was submitted")
                    result = fut.result()
                except BrokenProcessPool:
                    pool.shutdown(wait=True, cancel_futures=True)
                    lost = [(item, fut)] + list(pending)
                    pending.clear()
                    for it, f in lost:
                        ok = f is not None and f.done() and not f.cancelled() and f.exception() is None
                        yield f.result() if ok else self._alone(it)
                    pool = self._pool(self.workers)
                    continue
                yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, pool: ProcessPoolExecutor, item):
        """``pool.submit``, or None once the pool is broken (a worker died): the item is then retried."""
        try:
            return pool.submit(self.fn, item)
        except BrokenProcessPool:
            return None

    def _alone(self, item) -> dict:
        with self._pool(1) as pool:
            try:
                return pool.submit(self.fn, item).result()
            except BrokenProcessPool:
                return {"error": "the decoder crashed its process (native-code fault) on this file"}
