"""Safe output: atomic writes (a stage interrupted half-way never leaves a file that looks complete)
and one writer per folder."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from amflow.errors import AmflowError

TMP_SUFFIX = ".tmp"  # atomic_path's temporaries: .<name>.<random>.tmp/ beside the output
LOCK_FILE = ".amflow.lock"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and for directories (the block creates whichever it needs). A full disk becomes
    an :class:`AmflowError` naming ``path``; the previous ``path`` is then untouched.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise AmflowError(f"{path}: not a name an output can be written to; check the name that led here")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    target = tmp / path.name
    try:
        try:
            yield target
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise AmflowError(f"{path}: the disk is full ({exc.strerror}) while writing it; nothing was "
                                  f"replaced (the previous version, if any, is intact): free space and rerun") from None
            raise
        if not target.exists():
            raise FileNotFoundError(f"atomic write of {path} produced nothing")
        if path.is_dir() and not path.is_symlink():
            _check_replaceable(path, target)
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_replaceable(old: Path, new: Path) -> None:
    """Refuse to delete a folder that holds more than an earlier version of this output.

    A folder output (a frame cache) is replaced whole. If the folder there is an ancestor of the
    working folder, or holds sub-folders that the new output lacks, it is a store of other outputs
    (``data/frames/`` itself, say, reached through a bad name): deleting it would lose them.
    """
    here = Path.cwd().resolve()
    resolved = old.resolve()
    if resolved == here or resolved in here.parents:
        raise AmflowError(f"{old}: refusing to replace this folder: it contains the working folder; "
                          f"check the name that led here")
    foreign = sorted(d.name for d in old.iterdir() if d.is_dir() and not (new / d.name).is_dir())
    if foreign:
        raise AmflowError(f"{old}: refusing to replace this folder: it holds other outputs "
                          f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}) that the new one would "
                          f"delete; check the name that led here, or move the folder away yourself")


def temporaries(folder: Path, name: str = "*") -> list[Path]:
    """atomic_path's temporary folders in ``folder`` (of output ``name``, or of any output)."""
    folder = Path(folder)
    return sorted(folder.glob(f".{name}.*{TMP_SUFFIX}")) if folder.is_dir() else []


@contextlib.contextmanager
def exclusive_folder(folder: str | Path, what: str) -> Iterator[None]:
    """Be the one writer of ``folder`` (a run folder) for the block; a second one fails at once.

    The lock is the operating system's (released even when the holder is killed); its file names the
    holder, for the error the second writer gets. Holding it, leftovers of writes killed half-way
    (atomic_path temporaries) can only be stale: they are deleted.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_FILE
    holder = f"{what}, pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"

    def publish(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)

    lock = FileLock(lock_path, timeout=0, on_acquired=publish)
    try:
        lock.acquire()
    except Timeout:
        try:
            current = lock_path.read_text().strip()
        except OSError:
            current = ""
        raise AmflowError(f"{folder}: another process is writing this run folder ({current or 'holder unknown'}); "
                          f"wait for it to finish or stop it, then rerun") from None
    try:
        for stale in temporaries(folder):
            shutil.rmtree(stale, ignore_errors=True)
            print(f"note: removed {stale}, left by a write that was killed half-way", file=sys.stderr)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.truncate(lock_path, 0)  # the holder is leaving
        lock.release()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_png(fig: Any, path: str | Path, dpi: Any = "figure", **savefig_kw: Any) -> Path:
    """Save a matplotlib figure as a PNG, atomically and without the 'Software' text chunk (the
    matplotlib version), so that the bytes depend on the figure alone."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None}, **savefig_kw)
    return Path(path)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, paths
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (never the whole file in memory)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (run the stage that writes it first)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it and rerun the stage that writes it") from None


def mmap_npz(path: str | Path) -> dict[str, "np.ndarray"]:
    """The arrays of an ``.npz`` file, the uncompressed ones (``np.savez``) as read-only memory maps.

    ``np.load`` reads every member of an ``.npz`` whole; a per-frame table of a large dataset (the
    camera transforms of Kinetics-400: about 2.6 GB) should instead be paged in as it is read, and
    shared between processes. Compressed members and arrays of Python objects are read whole.
    """
    import numpy as np  # lazily: `amflow --help` and the rules import this module

    path = Path(path)
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            with zf.open(info) as member:
                if info.compress_type != zipfile.ZIP_STORED:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                    continue
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(member)
                header_len = member.tell()
            if dtype.hasobject or len(shape) == 0 or int(np.prod(shape)) == 0:
                with zf.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            raw.seek(info.header_offset)  # the local header's own name and extra lengths locate the data
            local = raw.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            offset = info.header_offset + 30 + name_len + extra_len + header_len
            out[name] = np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C",
                                  offset=offset)
    return out
