"""Frame records of the cache (raw or JPEG) and the extraction worker's job: decode, resize, encode.

Kept free of pandas and pydantic: ``amflow extract`` spawns its workers, and each imports only
this module (numpy, OpenCV, the video readers), so they start in a fraction of a second.
"""
from __future__ import annotations

import contextlib
import zlib

import cv2
import numpy as np

from amflow.data.video import decode_video
from amflow.errors import AmflowError
from amflow.io import DISK_FULL


def encode_frames(frames: np.ndarray, encoding: str, jpeg_quality: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T,H,W,3] RGB -> (all records concatenated as flat uint8, int64 byte length of each)."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if encoding == "raw":
        per = frames[0].nbytes if len(frames) else 0
        return frames.reshape(-1), np.full(len(frames), per, np.int64)  # a view: no copy of the frames
    if encoding == "jpeg":
        # Full-resolution chroma (4:4:4): after downscaling, the video's 4:2:0 chroma is as sharp as the
        # luma, and JPEG's default 4:2:0 would blur colour a second time (3x the error, for 20% fewer bytes).
        flags = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality),
                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        parts = []
        for f in frames:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), flags)
            if not ok:
                raise RuntimeError("cv2.imencode failed to encode a frame as JPEG")
            parts.append(buf.reshape(-1))
        blob = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        return blob, np.array([len(p) for p in parts], np.int64)
    raise ValueError(f"unknown frame encoding '{encoding}' (expected raw or jpeg)")


def record_checksums(blob: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC-32 of each record of ``blob`` (records back to back, ``lengths`` bytes each), as int64."""
    ends = np.cumsum(lengths)
    return np.array([zlib.crc32(blob[end - n:end]) for end, n in zip(ends, lengths)], np.int64)


def decode_record(buf: np.ndarray, encoding: str, height: int, width: int) -> np.ndarray:
    """One stored record (uint8 bytes) -> uint8 [H,W,3] RGB."""
    if encoding == "raw":
        return buf.reshape(height, width, 3)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise AmflowError("frame cache: a JPEG record does not decode; the cache is damaged, "
                          "delete the frames folder and rerun `amflow extract`")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def init_worker() -> None:
    cv2.setNumThreads(1)  # one decoder thread and one resize thread per process: no oversubscription


def decode_video_task(task: tuple) -> dict:
    """Worker: decode, resize and encode one video. Errors come back as data, except a full disk.

    With a ``part`` path, each decoded chunk is encoded and appended to that file at once, and only
    metadata comes back: sending megabytes of frames through the process pool's pipe costs more
    than decoding them, and the whole video never has to sit in memory.
    """
    path, short_side, encoding, jpeg_quality, backend, part = task

    def consume(fps, chunks):
        lengths, checksums, blobs, shape = [], [], [], (0, 0)
        with open(part, "wb") if part is not None else contextlib.nullcontext() as sink:  # "wb": a retry restarts
            for chunk in chunks:
                blob, chunk_lengths = encode_frames(chunk, encoding, jpeg_quality)
                if sink is None:
                    blobs.append(blob)
                else:
                    sink.write(blob)
                lengths.append(chunk_lengths)
                checksums.append(record_checksums(blob, chunk_lengths))  # while the bytes are in memory
                shape = chunk.shape[1:3]
        return {"blob": part if sink is not None else np.concatenate(blobs), "lengths": np.concatenate(lengths),
                "checksums": np.concatenate(checksums), "height": int(shape[0]), "width": int(shape[1]),
                "fps": round(float(fps), 6)}

    try:
        return decode_video(path, consume, short_side=short_side, backend=backend)
    except OSError as exc:
        if exc.errno in DISK_FULL:  # not the video's fault: stop the stage instead of listing every video as failed
            raise AmflowError(f"{part}: the disk is full ({exc.strerror}) while decoding {path} into this scratch "
                              f"file; free space there (the decoders' scratch folder is $TMPDIR) and rerun") from None
        return {"error": " ".join(str(exc).split()) or type(exc).__name__}
    except Exception as exc:  # VideoDecodeError and anything a broken file triggers
        return {"error": " ".join(str(exc).split()) or type(exc).__name__}
