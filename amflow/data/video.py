"""Video decoding: decord first, PyAV where decord is not installed (or when asked for).

Both backends return the same RGB frames for H.264 files (tests/data/test_video_io.py checks it).
Every decoding problem (unreadable container, truncated stream, zero frames) raises
:class:`VideoDecodeError` naming the file, so that extraction can list the video and go on.

decord's native code writes log lines to the process's stderr (its own C++ messages, and those of its
bundled FFmpeg) with no switch for the former; every failure also reaches us as an exception, which
names the file. Its calls therefore run with file descriptor 2 sent to /dev/null
(:func:`_decord_quietly`): a user sees the one-line errors of this module, not the library's.

Frames are decoded in chunks and resized chunk by chunk (:func:`decode_video`), so that a long
high-resolution video never sits in memory at full resolution, and extraction can write each chunk
out as soon as it is decoded.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TypeVar

import cv2
import numpy as np

from amflow.errors import AmflowError

BACKENDS = ("auto", "decord", "pyav")
BACKEND_ENV = "AMFLOW_VIDEO_BACKEND"
# decord's get_batch holds every requested frame at full resolution: after a first small batch
# (which tells the frame size) decode about _CHUNK_BYTES at a time.
_FIRST_CHUNK = 16
_CHUNK_BYTES = 64 << 20
_PYAV_CHUNK = 32  # frames per resize batch on the PyAV path

T = TypeVar("T")

# Constant quantiser, not CRF: x264's CRF rate control gave different bytes for the same frames in
# about one encode in five here (even with one thread); constant QP was byte-stable in every check.
# QP 16 adds 0.7 grey levels of mean error to the 3.6 of the yuv420p conversion itself (SynthMotion,
# 32 px, easy). SynthMotion's videos and the still clips of AM flow's noise floor use it.
CODEC = {"codec": "libx264", "pix_fmt": "yuv420p", "qp": 16, "preset": "veryfast", "threads": 1}


def encode_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """uint8 ``[T, H, W, 3]`` RGB frames as H.264 (:data:`CODEC`: libx264, yuv420p, constant QP) mp4 with
    PyAV. One encoder thread: the bytes then do not depend on the machine's core count."""
    import av

    h, w = frames.shape[1:3]
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(CODEC["codec"], rate=fps, options={
            "qp": str(CODEC["qp"]), "preset": CODEC["preset"], "threads": str(CODEC["threads"])})
        stream.width, stream.height, stream.pix_fmt = w, h, CODEC["pix_fmt"]
        for t, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts = t  # explicit timestamps (stream time base 1/fps): nothing left to the muxer's guess
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


class VideoDecodeError(AmflowError):
    """A file that cannot be decoded as a video (corrupt, truncated, not a video, no frames)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot decode video ({reason})")


def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: Optional[str] = None) -> str:
    """The backend to use: the argument, else $AMFLOW_VIDEO_BACKEND, else ``auto``.

    ``auto`` decodes with decord and retries a file that decord fails on with PyAV (decord 0.6.0
    mis-sizes frames of some widths, e.g. 16, 24, 48 and 72 px: dmlc/decord#336); it becomes
    ``pyav`` where decord is not installed. ``decord`` and ``pyav`` force one library, no retry.
    """
    name = (backend or os.environ.get(BACKEND_ENV) or "auto").lower()
    if name not in BACKENDS:
        raise AmflowError(f"unknown video backend '{name}' (from the argument or ${BACKEND_ENV}); "
                          f"use one of {', '.join(BACKENDS)}")
    if name == "auto" and not _decord_available():
        return "pyav"
    if name == "decord" and not _decord_available():
        raise AmflowError(f"video backend 'decord' was requested (argument or ${BACKEND_ENV}) but decord is not "
                          "installed on this machine; unset it to fall back to PyAV")
    return name


def resized_shape(height: int, width: int, short_side: Optional[int]) -> tuple[int, int]:
    """(height, width) after scaling so that the short side equals ``short_side`` (aspect kept)."""
    if short_side is None:
        return height, width
    if height <= width:
        return short_side, max(1, int(round(width * short_side / height)))
    return max(1, int(round(height * short_side / width))), short_side


def resize_frames(frames: np.ndarray, short_side: Optional[int]) -> np.ndarray:
    """Resize uint8 [T,H,W,3] frames to the short side (INTER_AREA: antialiased when shrinking)."""
    if short_side is None or len(frames) == 0:
        return frames
    h, w = frames.shape[1:3]
    nh, nw = resized_shape(h, w, short_side)
    if (nh, nw) == (h, w):
        return frames
    out = np.empty((len(frames), nh, nw, 3), np.uint8)
    for i, f in enumerate(frames):
        out[i] = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


# --------------------------------------------------------------------------- public readers
def decode_video(path: str | Path, consume: Callable[[float, Iterator[np.ndarray]], T],
                 short_side: Optional[int] = None, backend: Optional[str] = None,
                 indices: Optional[Sequence[int]] = None) -> T:
    """Run ``consume(fps, chunks)`` on the resized uint8 ``[k,H,W,3]`` chunks of a video, in order.

    ``indices`` selects frames (any order, repeats allowed); None means all. In ``auto`` mode a
    decord failure reruns ``consume`` from scratch on PyAV's chunks, so ``consume`` must start
    afresh each call (truncate its output). Raises :class:`VideoDecodeError`; an index outside the
    video raises IndexError.
    """
    path = _check_file(path)
    idx = None if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    name = resolve_backend(backend)
    readers = {"decord": _chunks_decord, "pyav": _chunks_pyav}

    def run(which: str) -> T:
        fps, chunks = readers[which](path, idx, short_side)
        try:
            return consume(fps, _checked(path, chunks, which))
        finally:
            chunks.close()

    if name != "auto":
        return run(name)
    try:
        return run("decord")
    except VideoDecodeError as first:
        try:
            return run("pyav")
        except VideoDecodeError as second:
            raise VideoDecodeError(path, f"decord: {first.reason}; PyAV: {second.reason}") from None


def read_video(path: str | Path, short_side: Optional[int] = None,
               backend: Optional[str] = None) -> tuple[np.ndarray, float]:
    """Decode every frame of ``path``: (uint8 [T,H,W,3] RGB, fps), resized to ``short_side`` if given."""
    return decode_video(path, _collect, short_side, backend)


def read_frames(path: str | Path, indices: Sequence[int], short_side: Optional[int] = None,
                backend: Optional[str] = None) -> np.ndarray:
    """Decode only the frames at ``indices`` (on-the-fly clip loading; out-of-range is an error)."""
    return decode_video(path, _collect, short_side, backend, indices=indices)[0]


def video_info(path: str | Path, backend: Optional[str] = None) -> tuple[int, float, int, int]:
    """(num_frames, fps, height, width); decord reads the count from the container, PyAV decodes."""
    path = _check_file(path)
    name = resolve_backend(backend)
    if name != "pyav":
        try:
            vr = _open_decord(path)
            with _decord_quietly():
                first = vr[0].asnumpy()
            if first.ndim != 3 or first.shape[2] != 3:
                raise VideoDecodeError(path, f"decord returned frames of shape {first.shape}")
            return len(vr), float(vr.get_avg_fps()), first.shape[0], first.shape[1]
        except Exception as exc:
            if name == "decord":
                err = exc if isinstance(exc, VideoDecodeError) else VideoDecodeError(path, _short(exc))
                raise err from None
    frames, fps = read_video(path, backend="pyav")
    return len(frames), fps, frames.shape[1], frames.shape[2]


# --------------------------------------------------------------------------- internals
def _collect(fps: float, chunks: Iterator[np.ndarray]) -> tuple[np.ndarray, float]:
    parts = list(chunks)
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), fps


def _checked(path: Path, chunks: Iterator[np.ndarray], which: str) -> Iterator[np.ndarray]:
    """Pass chunks on; decoder errors become VideoDecodeError; no frames at all is an error too."""
    count = 0
    try:
        for chunk in chunks:
            count += len(chunk)
            yield chunk
    except (VideoDecodeError, IndexError):
        raise
    except Exception as exc:  # decord's DECORDError, av.error.FFmpegError and friends
        raise VideoDecodeError(path, _short(exc)) from None
    if count == 0:
        raise VideoDecodeError(path, "no frames")


def _check_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file")
    return path


@contextlib.contextmanager
def _decord_quietly() -> Iterator[None]:
    """Run a decord call with the process's stderr (file descriptor 2) sent to /dev/null; Python's own
    ``sys.stderr`` is flushed first, so nothing written before is lost."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _open_decord(path: Path):
    import decord

    try:
        # One reader per call and one thread: readers shared between processes deadlock (decord #294).
        with _decord_quietly():
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:
        raise VideoDecodeError(path, _short(exc)) from None
    if len(vr) == 0:
        raise VideoDecodeError(path, "no frames")
    return vr


def _chunks_decord(path: Path, indices, short_side):
    vr = _open_decord(path)
    n = len(vr)
    wanted = np.arange(n) if indices is None else indices
    if len(wanted) and (wanted.min() < 0 or wanted.max() >= n):
        raise IndexError(f"{path}: frame indices outside [0, {n})")

    def chunks():
        pos, step = 0, _FIRST_CHUNK
        while pos < len(wanted):
            ids = wanted[pos:pos + step]
            with _decord_quietly():
                batch = vr.get_batch(ids.tolist()).asnumpy()
            if batch.ndim != 4 or batch.shape[3] != 3:
                raise RuntimeError(f"decord returned frames of shape {batch.shape[1:]} (dmlc/decord#336)")
            step = max(_FIRST_CHUNK, _CHUNK_BYTES // max(1, batch[0].nbytes))
            pos += len(ids)
            yield resize_frames(batch, short_side)

    return float(vr.get_avg_fps()), chunks()


def _chunks_pyav(path: Path, indices, short_side):
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:
        raise VideoDecodeError(path, _short(exc)) from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    stream = container.streams.video[0]
    stream.thread_count = 1
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0

    def chunks():
        try:
            if indices is None:
                pending = []
                for frame in container.decode(stream):
                    pending.append(frame.to_ndarray(format="rgb24"))
                    if len(pending) == _PYAV_CHUNK:
                        yield resize_frames(np.stack(pending), short_side)
                        pending = []
                if pending:
                    yield resize_frames(np.stack(pending), short_side)
                return
            # Selected frames: decode in order up to the last one wanted, keep only those.
            wanted, got = set(indices.tolist()), {}
            last = int(indices.max()) if len(indices) else -1
            for i, frame in enumerate(container.decode(stream)):
                if i > last:
                    break
                if i in wanted:
                    got[i] = resize_frames(frame.to_ndarray(format="rgb24")[None], short_side)[0]
            missing = sorted(wanted - set(got))
            if missing:
                raise IndexError(f"{path}: frame indices {missing[:5]} beyond the {len(got) and max(got) + 1} "
                                 "decoded frames")
            if len(indices):
                yield np.stack([got[int(i)] for i in indices])
        finally:
            container.close()

    return fps, chunks()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
