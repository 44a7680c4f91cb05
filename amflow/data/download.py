"""HTTP downloads that resume, verify and run in parallel.

- Resume: bytes go to ``<file>.part``; a retry or a later run asks for the rest with a ``Range``
  header and appends only if the server answers 206 from exactly that offset (otherwise it restarts).
- Verify: the size the server announced (and the expected size, if known) and an optional md5 or
  sha256 checksum. The final name appears only after verification (``.part`` is renamed), so a file
  under its final name is always complete.
- Retries with exponential backoff on network errors, interrupted transfers and 5xx/429 answers.
- Parallel: ``download_many`` runs a thread pool with one shared byte progress bar; a failed file does
  not stop the others, and one error at the end lists every failure.
"""
from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import requests
import urllib3
from amflow import io, progress
from amflow.errors import AmflowError

CHUNK = 1 << 20
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException, ConnectionError, TimeoutError)
_CHECKSUM_RE = re.compile(r"^(md5|sha256):([0-9a-fA-F]+)$")
_DIGEST_LEN = {"md5": 32, "sha256": 64}


@dataclass(frozen=True)
class DownloadItem:
    url: str
    dest: Path
    size: Optional[int] = None       # expected bytes, if known
    checksum: Optional[str] = None   # "md5:<hex>" or "sha256:<hex>"


class _Retry(Exception):
    """A transient failure: wait and try again (resuming from the .part file)."""


def parse_checksum(text: str) -> tuple[str, str]:
    m = _CHECKSUM_RE.match(text.strip())
    if not m or len(m.group(2)) != _DIGEST_LEN[m.group(1)]:
        raise AmflowError(f"checksum {text!r} is not 'md5:<32 hex digits>' or 'sha256:<64 hex digits>'; "
                          f"fix it in download.checksums")
    return m.group(1), m.group(2).lower()


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


class ByteProgress:
    """One thread-safe byte counter shared by parallel downloads (a tqdm bar, or nothing)."""

    def __init__(self, enabled: bool = True, desc: str = "download"):
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self._counted: dict[str, int] = {}
        # The total grows as files are declared: in a log, a line every 30 s rather than every N bytes.
        self.bar = progress.bar(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                                disable=not enabled, dynamic_ncols=True)

    def track(self, key: str, total: int, have: int) -> None:
        """Declare that ``key`` has ``total`` bytes of which ``have`` are on disk (idempotent, so that
        retries, resumes and restarts neither double-count nor lose bytes)."""
        with self._lock:
            self.bar.total = (self.bar.total or 0) + total - self._totals.get(key, 0)
            self._totals[key] = total
            self.bar.update(have - self._counted.get(key, 0))
            self._counted[key] = have

    def update(self, key: str, n: int) -> None:
        with self._lock:
            self._counted[key] = self._counted.get(key, 0) + n
            self.bar.update(n)

    def note(self, text: str) -> None:
        with self._lock:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


def _content_range(header: str) -> tuple[Optional[int], Optional[int]]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", header or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _fetch_once(session: requests.Session, url: str, dest: Path, expected_size: Optional[int],
                timeout: float, progress: Optional[ByteProgress], stop: Optional[threading.Event] = None) -> None:
    """Bring ``dest.part`` to the full size announced by the server, resuming if it exists.

    Raises _Retry for transient problems (the .part keeps what arrived), AmflowError for final ones.
    """
    part = part_path(dest)
    have = part.stat().st_size if part.exists() else 0
    # identity: byte ranges and sizes must refer to the file itself, not to a compressed transfer of it
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Retry(f"connection failed: {exc}") from None
    with resp:
        status = resp.status_code
        if status == 416 and have:
            # Range not satisfiable: the .part may already be complete, or longer than the file.
            _, total = _content_range(resp.headers.get("Content-Range", ""))
            if total is not None and total == have:
                return
            part.unlink()
            raise _Retry(f"server refused to resume at byte {have} (file is {total} bytes); restarting")
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status} {resp.reason}")
        if status >= 400:
            raise AmflowError(f"{url}: HTTP {status} {resp.reason}. Check the URL (download.base_url and the "
                              f"path lists); nothing was saved as {dest}")
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range", ""))
            if start != have or total is None:
                # Not the range we asked for: appending would corrupt the file.
                part.unlink(missing_ok=True)
                raise _Retry(f"server answered a range from byte {start}, asked {have}; restarting")
            mode = "ab"
        else:
            # 200: the server ignored the Range header (or there was none): start from zero.
            cl = resp.headers.get("Content-Length")
            total = int(cl) if cl is not None and cl.isdigit() else None
            if have and progress is not None:
                progress.note(f"{dest.name}: server ignored the range request; restarting from byte 0")
            have, mode = 0, "wb"
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise AmflowError(f"{dest}: size mismatch: the server ({url}) announces {total} bytes, expected "
                              f"{expected_size}. No file was kept; check the URL or the expected size.")
        if progress is not None and total is not None:
            progress.track(str(dest), total, have)
        # read1 hands over whatever has arrived, so a dropped connection loses nothing that reached us
        # (a buffered read of a whole chunk would discard a partial chunk with the error).
        raw = resp.raw
        read = raw.read1 if hasattr(raw, "read1") else raw.read
        written = 0
        with open(part, mode) as f:
            while True:
                try:
                    chunk = read(CHUNK, decode_content=False)
                except _NETWORK_ERRORS as exc:
                    raise _Retry(f"transfer interrupted after {have + written} bytes: {exc}") from None
                if not chunk:
                    break
                if stop is not None and stop.is_set():  # Ctrl-C in the main thread: keep the .part, quit
                    raise AmflowError(f"{dest}: download interrupted; run again to resume")
                f.write(chunk)  # disk errors (full disk) are not network errors: they propagate
                written += len(chunk)
                if progress is not None:
                    progress.update(str(dest), len(chunk))
        got = have + written
        if total is not None and got < total:
            raise _Retry(f"transfer ended at {got} of {total} bytes")
        if total is not None and got > total:
            part.unlink()
            raise _Retry(f"received {got} bytes, more than the {total} announced; restarting")


def verify_file(path: Path, *, label: Path, expected_size: Optional[int], checksum: Optional[str]) -> None:
    """Raise AmflowError naming ``label`` and both values if size or checksum differ."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise AmflowError(f"{label}: size mismatch: expected {expected_size} bytes, got {size}")
    if checksum:
        algo, want = parse_checksum(checksum)
        got = io.file_digest(path, algo)
        if got != want:
            raise AmflowError(f"{label}: {algo} checksum mismatch: expected {want}, got {got}")


def download_file(url: str, dest: Path, *, expected_size: Optional[int] = None, checksum: Optional[str] = None,
                  retries: int = 3, timeout: float = 60.0, backoff: float = 2.0,
                  session: Optional[requests.Session] = None, progress: Optional[ByteProgress] = None,
                  stop: Optional[threading.Event] = None) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, then rename it into place.

    An existing ``dest`` is trusted (it only ever appears verified) but re-checked against an expected
    size or checksum when given.
    """
    dest = Path(dest)
    if checksum:
        parse_checksum(checksum)  # a malformed checksum fails before any download
    if dest.exists():
        try:
            verify_file(dest, label=dest, expected_size=expected_size, checksum=checksum)
        except AmflowError as exc:
            raise AmflowError(f"{exc}. The file was downloaded earlier and no longer matches; delete it to "
                              f"download it again.") from None
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    own_session = session is None
    session = session or requests.Session()
    try:
        attempt = 0
        while True:
            try:
                _fetch_once(session, url, dest, expected_size, timeout, progress, stop)
                break
            except _Retry as exc:
                if attempt >= retries:
                    part = part_path(dest)
                    kept = part.stat().st_size if part.exists() else 0
                    raise AmflowError(f"{dest}: download from {url} failed after {attempt + 1} attempt(s): "
                                      f"{exc}. {kept} bytes are kept in {part}; run again to resume.") from None
                wait = backoff * (2 ** attempt)
                if progress is not None:
                    progress.note(f"{dest.name}: {exc}; retry {attempt + 1}/{retries} in {wait:.1f} s")
                time.sleep(wait)
                attempt += 1
    finally:
        if own_session:
            session.close()
    part = part_path(dest)
    try:
        verify_file(part, label=dest, expected_size=expected_size, checksum=checksum)
    except AmflowError as exc:
        part.unlink(missing_ok=True)  # its content is wrong: resuming it would not help
        raise AmflowError(f"{exc} (downloaded from {url}). The partial file was deleted and {dest} was not "
                          f"created; run again to download it afresh, or fix the expected value.") from None
    os.replace(part, dest)
    return dest


def download_many(items: list[DownloadItem], *, workers: int = 4, retries: int = 3, timeout: float = 60.0,
                  backoff: float = 2.0, progress: bool = True, desc: str = "download",
                  on_done: Optional[Callable[[DownloadItem, Path], None]] = None) -> list[Path]:
    """Download ``items`` with ``workers`` threads; ``on_done(item, path)`` runs in the worker after each.

    Every item is attempted; if any fail, one AmflowError lists them all (the others are kept).
    """
    bar = ByteProgress(enabled=progress, desc=desc)
    stop = threading.Event()
    local = threading.local()  # one requests.Session per thread (Session is not thread-safe)

    def job(item: DownloadItem) -> Path:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        path = download_file(item.url, item.dest, expected_size=item.size, checksum=item.checksum,
                             retries=retries, timeout=timeout, backoff=backoff, session=local.session,
                             progress=bar, stop=stop)
        if on_done is not None:
            on_done(item, path)
        return path

    results: dict[int, Path] = {}
    failures: list[str] = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = {pool.submit(job, item): i for i, item in enumerate(items)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except AmflowError as exc:
                failures.append(str(exc))
    except BaseException:
        # Ctrl-C: tell running downloads to stop at their next chunk (their .part files stay for resuming)
        # and drop the queued ones, instead of waiting for every file to finish.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    if failures:
        raise AmflowError(f"{len(failures)} of {len(items)} download(s) failed:\n  - " + "\n  - ".join(failures))
    return [results[i] for i in range(len(items))]
