"""The sharded frame cache: write side (:class:`ShardWriter`) and read side (:class:`FrameCache`).

Layout of ``data/frames/<dataset>-<spec>/`` (docs/architecture.md, "Frame cache"):

- ``shard_00000.bin``: frame records back to back, each raw uint8 HxWx3 (``encoding: raw``) or one
  JPEG file (``encoding: jpeg``). A video never straddles two shards, so a shard holds at most
  ``shard_frames`` frames unless one video alone is longer.
- ``shard_00000.index.npy``: int64 ``[frames_in_shard, 3]`` = (byte offset, byte length, CRC-32) per
  record. A read checks the CRC-32 of every record it reads (a flipped bit is an error naming the shard
  and how to rebuild the cache); ``bench/bench_data.py`` prints what that adds to a read.
- ``manifest.csv``: one row per decoded video (:data:`MANIFEST_COLUMNS`), in the order train, val,
  test and annotation order within a split; ``global_start`` numbers frames across the whole cache.
- ``failures.csv``: ``video, split, error`` for videos that could not be decoded.
- ``summary.json``: counts, sizes and the params used; written last, so it marks a complete cache.

Shards are memory-mapped lazily and per process: a reader pickled into a DataLoader worker (fork or
spawn) carries only paths and reopens its maps there. Each map holds one file descriptor, and a
worker at Kinetics scale touches thousands of shards per epoch, so a reader keeps at most
:data:`MAX_OPEN_SHARDS` data maps open (least recently used closed first) and reads each small index
whole; :func:`raise_open_file_limit` lifts the soft descriptor limit for the rest (loader workers).
"""
from __future__ import annotations

import contextlib
import mmap
import os
import resource
import shutil
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from amflow import io, paths
from amflow.data.frame_codec import decode_record, encode_frames, record_checksums  # noqa: F401 (re-exported)
from amflow.errors import AmflowError

MANIFEST = "manifest.csv"
FAILURES = "failures.csv"
SUMMARY = paths.FRAMES_SUMMARY
MANIFEST_COLUMNS = ("video_id", "split", "label", "video", "shard", "first_frame", "num_frames",
                    "global_start", "height", "width", "fps")
FAILURE_COLUMNS = ("video", "split", "error")
FORMAT_VERSION = 2  # 2: a CRC-32 per record in the shard indexes
# Data maps one reader keeps open (one descriptor each); a re-open costs one open() and mmap().
MAX_OPEN_SHARDS = 64


def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}.bin"


def index_name(shard: int) -> str:
    return f"shard_{shard:05d}.index.npy"


# --------------------------------------------------------------------------- writing
class ShardWriter:
    """Appends videos' encoded frames to shard files and records where each video landed."""

    def __init__(self, folder: Path, shard_frames: int):
        self.folder = Path(folder)
        self.shard_frames = int(shard_frames)
        self.shard = -1
        self._file = None
        self._index: list[np.ndarray] = []
        self._frames_in_shard = 0
        self._offset = 0
        self.bytes_written = 0
        self.frames_written = 0

    def add(self, blob: Union[np.ndarray, str, Path], lengths: np.ndarray, checksums: np.ndarray) -> tuple[int, int]:
        """Write one video's records (flat uint8 array, or a file holding them) with the CRC-32 of each
        (:func:`record_checksums`); returns (shard, first frame)."""
        n, nbytes = len(lengths), int(np.sum(lengths))
        if self._file is None or (self._frames_in_shard and self._frames_in_shard + n > self.shard_frames):
            self._roll()
        if isinstance(blob, np.ndarray):
            if blob.nbytes != nbytes:
                raise ValueError(f"records hold {blob.nbytes} bytes, their lengths say {nbytes}")
            self._file.write(blob)
        else:
            _append_file(blob, self._file, nbytes)
        offsets = self._offset + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._index.append(np.stack([offsets, lengths.astype(np.int64), np.asarray(checksums, np.int64)], axis=1))
        first = self._frames_in_shard
        self._frames_in_shard += n
        self._offset += nbytes
        self.bytes_written += nbytes
        self.frames_written += n
        return self.shard, first

    def _roll(self) -> None:
        self._finish_shard()
        self.shard += 1
        self._file = open(self.folder / shard_name(self.shard), "wb", buffering=0)  # large writes only
        self._index, self._frames_in_shard, self._offset = [], 0, 0

    def _finish_shard(self) -> None:
        if self._file is None:
            return
        self._file.close()
        index = np.concatenate(self._index) if self._index else np.zeros((0, 3), np.int64)
        np.save(self.folder / index_name(self.shard), index)
        self._file = None

    def close(self) -> int:
        """Finish the last shard; returns the number of shards."""
        self._finish_shard()
        return self.shard + 1

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _append_file(src: Union[str, Path], dst, nbytes: int) -> None:
    """Append all of ``src`` (exactly ``nbytes``) to the unbuffered file ``dst``, in the kernel if possible."""
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != nbytes:
            raise ValueError(f"{src}: {size} bytes of records, their lengths say {nbytes}")
        done = 0
        try:
            while done < size:
                sent = os.sendfile(dst.fileno(), f.fileno(), done, size - done)
                if sent == 0:
                    break
                done += sent
        except (AttributeError, OSError):  # no sendfile between files here (macOS, some filesystems)
            f.seek(done)
            shutil.copyfileobj(f, dst, 16 << 20)
            done = size
        if done != size:
            raise OSError(f"{src}: copied {done} of {size} bytes into the shard")


class CacheBuilder:
    """Collects videos into shards plus the manifest and failure rows; :meth:`finish` writes the tables.

    ``amflow extract`` feeds it from its decoding workers; tests and tools can build a cache from
    frames in memory with :func:`write_cache`.
    """

    def __init__(self, folder: Path, encoding: str = "raw", shard_frames: int = 20000, jpeg_quality: int = 90):
        self.folder = Path(folder)
        self.encoding, self.jpeg_quality = encoding, jpeg_quality
        self.writer = ShardWriter(self.folder, shard_frames)
        self.rows: list[dict] = []
        self.failures: list[dict] = []

    def add_encoded(self, video_id: str, split: str, label: int, video: str, blob: np.ndarray, lengths: np.ndarray,
                    checksums: np.ndarray, height: int, width: int, fps: float) -> dict:
        shard, first = self.writer.add(blob, lengths, checksums)
        n = len(lengths)
        row = {"video_id": video_id, "split": split, "label": int(label), "video": video, "shard": shard,
               "first_frame": first, "num_frames": n, "global_start": self.writer.frames_written - n,
               "height": int(height), "width": int(width), "fps": float(fps)}
        self.rows.append(row)
        return row

    def add_frames(self, video_id: str, split: str, label: int, video: str, frames: np.ndarray,
                   fps: float) -> dict:
        if len(frames) == 0:
            raise ValueError(f"video {video_id}: no frames to cache")
        blob, lengths = encode_frames(frames, self.encoding, self.jpeg_quality)
        return self.add_encoded(video_id, split, label, video, blob, lengths, record_checksums(blob, lengths),
                                frames.shape[1], frames.shape[2], fps)

    def add_failure(self, video: str, split: str, error: str) -> None:
        self.failures.append({"video": video, "split": split, "error": error})

    def abort(self) -> None:
        self.writer.abort()

    def finish(self, summary: dict) -> dict:
        """Close the shards, write manifest.csv, failures.csv and, last, summary.json (returned)."""
        shards = self.writer.close()
        pd.DataFrame(self.rows, columns=list(MANIFEST_COLUMNS)).to_csv(self.folder / MANIFEST, index=False)
        pd.DataFrame(self.failures, columns=list(FAILURE_COLUMNS)).to_csv(self.folder / FAILURES, index=False)
        summary = {**summary, "videos": len(self.rows), "failed": len(self.failures),
                   "frames": self.writer.frames_written, "bytes": self.writer.bytes_written, "shards": shards}
        summary.setdefault("format_version", FORMAT_VERSION)
        summary.setdefault("params", {})
        summary["params"] = {**summary["params"], "encoding": self.encoding}
        io.write_json(self.folder / SUMMARY, summary)  # last: its presence means the cache is complete
        return summary


def write_cache(frames_dir: str | Path, videos: Sequence[dict], encoding: str = "raw", shard_frames: int = 20000,
                jpeg_quality: int = 90) -> dict:
    """Write a complete cache from frames in memory (atomically).

    ``videos``: dicts with ``frames`` (uint8 [T,H,W,3]), ``video_id``, ``split``, ``label`` and
    optionally ``video`` (defaults to the id) and ``fps`` (default 25).
    """
    with io.atomic_path(frames_dir) as tmp:
        tmp.mkdir()
        builder = CacheBuilder(tmp, encoding, shard_frames, jpeg_quality)
        for v in videos:
            builder.add_frames(v["video_id"], v["split"], v["label"], v.get("video", v["video_id"]),
                               v["frames"], v.get("fps", 25.0))
        summary = builder.finish({"params": {"encoding": encoding, "jpeg_quality": jpeg_quality,
                                             "shard_frames": shard_frames}})
    return summary


# --------------------------------------------------------------------------- reading
Row = Union[int, np.integer, pd.Series]


class FrameCache:
    """Random access to the frames of a complete cache written by ``amflow extract``."""

    def __init__(self, frames_dir: str | Path):
        self.frames_dir = Path(frames_dir)
        summary_path = self.frames_dir / SUMMARY
        if not summary_path.exists():
            raise AmflowError(f"{self.frames_dir}: no complete frame cache ({SUMMARY} missing); "
                              "run `amflow extract --dataset <name>` first")
        self.summary = io.read_json(summary_path)
        if self.summary.get("format_version") != FORMAT_VERSION:
            raise AmflowError(f"{self.frames_dir}: frame cache of format {self.summary.get('format_version')}, written "
                              f"by an earlier amflow (format {FORMAT_VERSION} checks every frame's checksum); rebuild "
                              f"it: {self._rebuild()}")
        self.encoding = self.summary["params"]["encoding"]
        self.manifest = pd.read_csv(self.frames_dir / MANIFEST, dtype={"video_id": str, "video": str, "split": str})
        # Plain int64 arrays: a read must not go through pandas (it dominates at these sizes).
        m = self.manifest
        self._shard = m["shard"].to_numpy(np.int64) if len(m) else np.zeros(0, np.int64)
        self._first = m["first_frame"].to_numpy(np.int64) if len(m) else np.zeros(0, np.int64)
        self._count = m["num_frames"].to_numpy(np.int64) if len(m) else np.zeros(0, np.int64)
        self._hw = m[["height", "width"]].to_numpy(np.int64) if len(m) else np.zeros((0, 2), np.int64)
        self._maps: OrderedDict[int, tuple[np.ndarray, np.ndarray, Optional[mmap.mmap]]] = OrderedDict()
        self._pid = os.getpid()

    # Pickling (DataLoader with spawn) must not copy the mapped shards: drop them, reopen lazily.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def num_frames_total(self) -> int:
        return int(self._count.sum())

    def videos(self, split: Optional[str] = None) -> pd.DataFrame:
        """Manifest rows of ``split`` (all if None); the index is the manifest position, usable in read()."""
        if split is None:
            return self.manifest
        return self.manifest[self.manifest["split"] == split]

    def position(self, row: Row) -> int:
        pos = int(row.name) if isinstance(row, pd.Series) else int(row)
        if not 0 <= pos < len(self.manifest):
            raise IndexError(f"video position {pos} outside the manifest (0..{len(self.manifest) - 1})")
        return pos

    def read(self, row: Row, indices: Optional[Sequence[int]] = None) -> np.ndarray:
        """Frames ``indices`` (within the video; all if None) of a video -> uint8 [k,H,W,3] RGB."""
        pos = self.position(row)
        n = int(self._count[pos])
        idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"frame indices {idx.tolist()} outside [0, {n}) for video "
                             f"{self.manifest.at[pos, 'video_id']}")
        shard = int(self._shard[pos])
        data, index = self._open(shard)
        h, w = (int(v) for v in self._hw[pos])
        rows = self._first[pos] + idx
        if len(rows) and rows.max() >= len(index):
            raise self._corrupt(shard, f"its index has {len(index)} records, the manifest needs "
                                       f"record {int(rows.max())}")
        records = index[rows]
        out = np.empty((len(idx), h, w, 3), np.uint8)
        for k, (off, length, crc) in enumerate(records):
            record = data[off:off + length]
            if zlib.crc32(record) != crc:
                raise self._corrupt(shard, f"frame {int(idx[k])} of video {self.manifest.at[pos, 'video_id']} (record "
                                           f"{int(rows[k])}) does not match its checksum: its bytes changed since "
                                           f"the cache was written")
            try:
                out[k] = decode_record(record, self.encoding, h, w)
            except (AmflowError, ValueError) as exc:
                raise self._corrupt(shard, f"a frame of video {self.manifest.at[pos, 'video_id']} does not "
                                           f"decode: {exc}") from None
        return out

    def _rebuild(self) -> str:
        return (f"delete {self.frames_dir} and rerun `amflow extract --dataset "
                f"{paths.dataset_of_key(self.frames_dir.name)}` (or the pipeline)")

    def _corrupt(self, shard: int, why: str) -> AmflowError:
        return AmflowError(f"{self.frames_dir / shard_name(shard)}: frame cache shard is damaged ({why}); rebuild "
                           f"the cache: {self._rebuild()}")

    def _open(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pid != os.getpid():  # forked into a worker: maps are reopened per process
            self._maps, self._pid = OrderedDict(), os.getpid()
        if shard in self._maps:
            self._maps.move_to_end(shard)
            return self._maps[shard][:2]
        while len(self._maps) >= MAX_OPEN_SHARDS:  # close the least recently used map's descriptor now
            _, (_, _, old) = self._maps.popitem(last=False)
            if old is not None:
                with contextlib.suppress(BufferError):  # a caller still holds a view: closed when it is freed
                    old.close()
        path = self.frames_dir / shard_name(shard)
        try:
            # The index is 16 bytes per frame (320 kB for a full shard): read whole, it holds no descriptor.
            index = np.load(self.frames_dir / index_name(shard))
            size = path.stat().st_size
        except (OSError, ValueError) as exc:
            raise self._corrupt(shard, f"unreadable: {exc}") from None
        if index.ndim != 2 or index.shape[1] != 3:
            raise self._corrupt(shard, f"its index {index_name(shard)} has shape {index.shape}, not [n, 3]")
        # Shards are written record after record: the last record ends exactly at the end of the file.
        end = int((index[:, 0] + index[:, 1]).max()) if len(index) else 0
        if end != size:
            raise self._corrupt(shard, f"{size} bytes where its index says {end}: truncated or overwritten")
        mm = None
        if size:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # keeps one descriptor until closed
            data = np.frombuffer(mm, dtype=np.uint8)
        else:
            data = np.zeros(0, np.uint8)
        self._maps[shard] = (data, index, mm)
        return data, index

    @property
    def open_shards(self) -> int:
        """Data maps this reader holds open in this process (at most :data:`MAX_OPEN_SHARDS`)."""
        return len(self._maps) if self._pid == os.getpid() else 0


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (DataLoader workers); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # a hard limit above what the kernel allows (nr_open): keep the soft one
        return soft
    return target
