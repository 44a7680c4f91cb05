"""Tar extraction that never writes outside the target folder, and never extracts an archive twice.

Downloaded archives are untrusted input: a member named ``../x`` or ``/etc/x``, or a link pointing
outside, could overwrite files anywhere the user can write. Every member goes through tarfile's
``'data'`` filter (paths and links must stay inside the target folder, no device files), made
stricter on absolute names; a refused member fails the extraction with one line that names it.

A marker file per archive (``<dest>/.amflow_extracted/<name>.json``) is written after the last member,
so an interrupted extraction is redone and a finished one is skipped.
"""
from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Optional, Union

from amflow import io as aio
from amflow.errors import AmflowError

MARKER_DIR = ".amflow_extracted"

# The 'data' filter exists in Python >= 3.12 and in the security releases 3.10.12 and 3.11.4 on.
if not hasattr(tarfile, "data_filter"):  # pragma: no cover - only on old patch releases
    raise ImportError("amflow extracts downloaded archives with tarfile's 'data' filter: use Python "
                      ">= 3.10.12, 3.11.4 or 3.12")


def marker_path(dest: Path, archive_name: str) -> Path:
    return Path(dest) / MARKER_DIR / f"{archive_name}.json"


def is_extracted(dest: Path, archive_name: str) -> bool:
    return marker_path(dest, archive_name).exists()


def _data_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
    """tarfile's ``'data'`` filter, which also refuses an absolute member name: the filter alone would
    strip the leading slash and extract it inside, but an archive that names ``/etc/x`` is not trusted."""
    if member.name.startswith(("/", os.sep)):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest_path)


def extract_stream(fileobj: BinaryIO, dest: Path, archive_label: str) -> int:
    """Extract a (possibly compressed) tar stream member by member; return the number of members.

    Streaming mode (``r|*``) reads the archive once, front to back, so it also works on the
    concatenation of split archive parts (SSv2) without writing the joined file to disk.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest_real = os.path.realpath(dest)
    count = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                try:
                    tar.extract(member, dest_real, filter=_data_filter)
                except tarfile.FilterError as exc:
                    raise AmflowError(f"{archive_label}: refusing to extract member {member.name!r}: {exc}. "
                                      f"Delete the archive and download it again.") from None
                count += 1
    except (tarfile.ReadError, tarfile.StreamError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        # Disk errors (full disk, permissions) are not caught: they are not the archive's fault.
        raise AmflowError(f"{archive_label}: cannot read the archive ({exc}); it is truncated or corrupt. "
                          f"Delete it and run the stage again to download it again.") from None
    return count


def extract_tar(archive: Path, dest: Path, *, name: Optional[str] = None, delete_after: bool = False) -> bool:
    """Safely extract ``archive`` into ``dest`` unless its marker says it was done; return True if extracted.

    ``name`` is the marker key (default: the archive's file name). With ``delete_after`` the archive is
    removed once the marker is written (its content is on disk, and reruns skip it by the marker).
    """
    archive, dest = Path(archive), Path(dest)
    key = name or archive.name
    if is_extracted(dest, key):
        return False
    if not archive.exists():
        raise AmflowError(f"{archive}: archive not found (nor its marker {marker_path(dest, key)}); "
                          f"run the stage again to download it")
    size = archive.stat().st_size
    with open(archive, "rb") as f:
        members = extract_stream(f, dest, str(archive))
    write_marker(dest, key, {"archive": str(archive), "bytes": size, "members": members})
    if delete_after:
        archive.unlink()
    return True


def write_marker(dest: Path, key: str, info: dict) -> None:
    aio.write_json(marker_path(dest, key), {**info, "extracted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                   time.gmtime())})


class ConcatReader(io.RawIOBase):
    """Read several binary streams one after the other, as one (for archives split into parts)."""

    def __init__(self, opener: Iterable):
        self._openers = iter(opener)  # callables returning a binary stream, opened lazily
        self._current: Optional[BinaryIO] = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._current is None:
                nxt = next(self._openers, None)
                if nxt is None:
                    return 0
                self._current = nxt()
            n = self._current.readinto(buffer)
            if n:
                return n
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()


def open_parts(parts: list[Union[Path, tuple[Path, str]]]) -> io.BufferedReader:
    """One stream over ``parts`` in order: a plain file path, or ``(zip path, member name)``."""
    import zipfile

    def opener(part):
        if isinstance(part, tuple):
            zpath, member = part

            def open_member():
                zf = zipfile.ZipFile(zpath)
                stream = zf.open(member)
                # Close the zip file together with its member stream.
                orig_close = stream.close

                def close():
                    orig_close()
                    zf.close()

                stream.close = close
                return stream
            return open_member
        return lambda: open(part, "rb")

    return io.BufferedReader(ConcatReader(opener(p) for p in parts), buffer_size=1 << 20)
