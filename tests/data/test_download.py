"""Downloader, safe extraction and the Kinetics-400 path end to end, against a local HTTP server.

The server (127.0.0.1 only) honours ``Range`` requests and can be told to drop a connection after N
bytes, to ignore ranges, or to answer 404, so resume, restart and failure paths are all exercised.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from amflow.data import safe_tar
from amflow.data.download import DownloadItem, download_file, download_many, part_path
from amflow.errors import AmflowError


# --------------------------------------------------------------------------- test server
class RangeServer:
    """Serve ``files`` (URL path -> bytes) on 127.0.0.1 with Range support and fault injection."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, dict]] = []  # (path, headers) of every GET
        self.drop_after: dict[str, int] = {}        # path -> bytes sent before closing (once)
        self.ignore_range: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, dict(self.headers)))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and path not in server.ignore_range:
                    start = int(re.match(r"bytes=(\d+)-$", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = server.drop_after.pop(path, None)
                if cut is not None:
                    # Announce the full length, send part of it, hang up: an interrupted transfer.
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def gets(self, path: str) -> list[dict]:
        return [h for p, h in self.requests if p == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = RangeServer({})
    yield s
    s.close()


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# --------------------------------------------------------------------------- download_file
def test_resume_after_interrupted_transfer_within_retries(server, tmp_path):
    data = payload(300_000)
    server.files["/f.bin"] = data
    server.drop_after["/f.bin"] = 100_000
    dest = tmp_path / "f.bin"
    download_file(server.url("/f.bin"), dest, retries=2, backoff=0, timeout=10)
    assert dest.read_bytes() == data
    assert not part_path(dest).exists()
    first, second = server.gets("/f.bin")
    assert "Range" not in first
    assert second["Range"] == "bytes=100000-"


def test_resume_in_a_later_run_keeps_the_partial_bytes(server, tmp_path):
    data = payload(200_000, seed=1)
    server.files["/g.bin"] = data
    server.drop_after["/g.bin"] = 50_000
    dest = tmp_path / "g.bin"
    with pytest.raises(AmflowError, match="run again to resume") as err:
        download_file(server.url("/g.bin"), dest, retries=0, backoff=0, timeout=10)
    assert "g.bin" in str(err.value)
    assert not dest.exists()  # no final name before the file is complete
    assert part_path(dest).stat().st_size == 50_000
    download_file(server.url("/g.bin"), dest, retries=0, backoff=0, timeout=10)
    assert dest.read_bytes() == data
    assert server.gets("/g.bin")[-1]["Range"] == "bytes=50000-"


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload(50_000, seed=2)
    server.files["/h.bin"] = data
    server.ignore_range.add("/h.bin")
    dest = tmp_path / "h.bin"
    part_path(dest).write_bytes(b"x" * 1234)  # stale partial bytes that must not survive
    download_file(server.url("/h.bin"), dest, retries=0, backoff=0, timeout=10)
    assert server.gets("/h.bin")[0]["Range"] == "bytes=1234-"
    assert dest.read_bytes() == data


def test_complete_part_file_is_finished_without_new_bytes(server, tmp_path):
    data = payload(10_000, seed=3)
    server.files["/c.bin"] = data
    dest = tmp_path / "c.bin"
    part_path(dest).write_bytes(data)  # the previous run died just before the rename
    download_file(server.url("/c.bin"), dest, retries=0, backoff=0, timeout=10)
    assert dest.read_bytes() == data


def test_size_mismatch_is_reported_and_leaves_no_file(server, tmp_path):
    server.files["/s.bin"] = payload(5000)
    dest = tmp_path / "s.bin"
    with pytest.raises(AmflowError) as err:
        download_file(server.url("/s.bin"), dest, expected_size=4096, retries=0, backoff=0, timeout=10)
    msg = str(err.value)
    assert "s.bin" in msg and "5000" in msg and "4096" in msg and "size mismatch" in msg
    assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_checksum_mismatch_is_reported_and_leaves_no_file(server, tmp_path, algo):
    data = payload(8000, seed=4)
    server.files["/k.bin"] = data
    dest = tmp_path / "k.bin"
    wrong = "0" * (32 if algo == "md5" else 64)
    with pytest.raises(AmflowError) as err:
        download_file(server.url("/k.bin"), dest, checksum=f"{algo}:{wrong}", retries=0, backoff=0, timeout=10)
    actual = hashlib.new(algo, data).hexdigest()
    msg = str(err.value)
    assert "k.bin" in msg and wrong in msg and actual in msg and algo in msg
    assert not dest.exists() and not part_path(dest).exists()
    # The right checksum passes.
    download_file(server.url("/k.bin"), dest, checksum=f"{algo}:{actual}", retries=0, backoff=0, timeout=10)
    assert dest.read_bytes() == data


def test_malformed_checksum_fails_before_downloading(server, tmp_path):
    server.files["/m.bin"] = b"abc"
    with pytest.raises(AmflowError, match="md5:<32 hex digits>"):
        download_file(server.url("/m.bin"), tmp_path / "m.bin", checksum="md5:xyz", retries=0)
    assert server.requests == []


def test_http_404_fails_at_once_naming_the_url(server, tmp_path):
    with pytest.raises(AmflowError, match=r"HTTP 404.*base_url") as err:
        download_file(server.url("/nope.bin"), tmp_path / "nope.bin", retries=3, backoff=0, timeout=10)
    assert "/nope.bin" in str(err.value)
    assert len(server.gets("/nope.bin")) == 1  # not retried: it will not get better


def test_stop_event_interrupts_and_keeps_the_part_for_resuming(server, tmp_path):
    # download_many sets this event on Ctrl-C so that running downloads end at their next chunk.
    server.files["/big.bin"] = payload(3 << 20, seed=5)
    stop = threading.Event()
    stop.set()
    dest = tmp_path / "big.bin"
    with pytest.raises(AmflowError, match="interrupted; run again to resume"):
        download_file(server.url("/big.bin"), dest, retries=0, timeout=10, stop=stop)
    assert not dest.exists() and part_path(dest).exists()
    download_file(server.url("/big.bin"), dest, retries=0, timeout=10)
    assert dest.read_bytes() == server.files["/big.bin"]


def test_download_many_parallel_collects_all_failures(server, tmp_path):
    files = {f"/p{i}.bin": payload(40_000 + i, seed=i) for i in range(4)}
    server.files.update(files)
    server.drop_after["/p2.bin"] = 1000
    items = [DownloadItem(server.url(p), tmp_path / p.strip("/")) for p in files]
    items.append(DownloadItem(server.url("/missing.bin"), tmp_path / "missing.bin"))
    done = []
    with pytest.raises(AmflowError) as err:
        download_many(items, workers=3, retries=2, backoff=0, timeout=10, progress=False,
                      on_done=lambda item, path: done.append(path.name))
    assert "1 of 5 download(s) failed" in str(err.value) and "missing.bin" in str(err.value)
    for p, data in files.items():  # the failure did not stop the others
        assert (tmp_path / p.strip("/")).read_bytes() == data
    assert sorted(done) == sorted(p.strip("/") for p in files)


# --------------------------------------------------------------------------- safe extraction
def make_tar(path: Path, members: list[tuple[str, str, object]], mode: str = "w:gz") -> Path:
    """members: (kind, name, data) with kind file (data bytes), dir, sym or lnk (data = link target), fifo."""
    with tarfile.open(path, mode) as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE}[kind]
            if kind == "dir":
                info.mode = 0o755
            else:
                info.linkname = data
            tar.addfile(info)
    return path


def test_good_tar_extracts_once(tmp_path):
    archive = make_tar(tmp_path / "good.tar.gz", [("dir", "clips", None), ("file", "clips/a.mp4", b"AAA"),
                                                  ("file", "b.mp4", b"BB"), ("sym", "clips/link.mp4", "a.mp4")])
    dest = tmp_path / "out"
    assert safe_tar.extract_tar(archive, dest) is True
    assert (dest / "clips" / "a.mp4").read_bytes() == b"AAA"
    assert (dest / "b.mp4").read_bytes() == b"BB"
    assert (dest / "clips" / "link.mp4").read_bytes() == b"AAA"
    marker = json.loads(safe_tar.marker_path(dest, "good.tar.gz").read_text())
    assert marker["members"] == 4
    (dest / "b.mp4").write_bytes(b"edited")
    assert safe_tar.extract_tar(archive, dest) is False  # the marker says done: not extracted again
    assert (dest / "b.mp4").read_bytes() == b"edited"


def test_delete_after_removes_the_archive_and_the_marker_still_skips(tmp_path):
    archive = make_tar(tmp_path / "d.tar", [("file", "x.mp4", b"x")], mode="w")
    dest = tmp_path / "out"
    assert safe_tar.extract_tar(archive, dest, delete_after=True)
    assert not archive.exists()
    assert safe_tar.extract_tar(archive, dest, delete_after=True) is False


@pytest.mark.parametrize("members, bad", [
    ([("file", "ok.mp4", b"1"), ("file", "../evil.txt", b"pwned")], "../evil.txt"),
    ([("file", "sub/../../evil.txt", b"pwned")], "sub/../../evil.txt"),
    ([("file", "/tmp/amflow-test-evil.txt", b"pwned")], "/tmp/amflow-test-evil.txt"),
    ([("sym", "escape", "../../outside")], "escape"),
    ([("sym", "abs", "/etc/passwd")], "abs"),
    ([("sym", "here", "."), ("file", "here/../../evil.txt", b"pwned")], "here/../../evil.txt"),
    ([("lnk", "hard", "../outside.txt")], "hard"),
    ([("lnk", "hard", "/etc/passwd")], "hard"),
    ([("fifo", "pipe", "")], "pipe"),
])
def test_unsafe_members_are_refused_by_name(tmp_path, members, bad):
    archive = make_tar(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "a" / "out"
    with pytest.raises(AmflowError) as err:
        safe_tar.extract_tar(archive, dest)
    assert repr(bad) in str(err.value) and "bad.tar.gz" in str(err.value)
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/amflow-test-evil.txt").exists()
    assert not safe_tar.is_extracted(dest, "bad.tar.gz")


def test_corrupt_archive_is_reported(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    good = make_tar(tmp_path / "g.tar.gz", [("file", "a.mp4", payload(20_000))]).read_bytes()
    archive.write_bytes(good[: len(good) // 2])
    with pytest.raises(AmflowError, match="truncated or corrupt"):
        safe_tar.extract_tar(archive, tmp_path / "out")


def test_split_parts_stream_as_one_archive(tmp_path):
    blob = make_tar(tmp_path / "whole.tar.gz", [("file", "v/1.webm", b"one"), ("file", "v/2.webm", b"two")]).read_bytes()
    (tmp_path / "p0").write_bytes(blob[:100])
    import zipfile
    with zipfile.ZipFile(tmp_path / "p1.zip", "w") as zf:
        zf.writestr("p1", blob[100:])
    with safe_tar.open_parts([tmp_path / "p0", (tmp_path / "p1.zip", "p1")]) as stream:
        assert safe_tar.extract_stream(stream, tmp_path / "out", "parts") == 2
    assert (tmp_path / "out" / "v" / "2.webm").read_bytes() == b"two"


# --------------------------------------------------------------------------- Kinetics-400 end to end
def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def k400_tree(server: RangeServer) -> str:
    """A tiny CVDF-like mirror: 3 train tarballs, 1 val tarball, CSVs, path lists, replacement archive."""
    base = "/kinetics/400"
    train_rows = [("bowling", "yid_a", 10, 20), ("abseiling", "-yid_b", 0, 10), ("catching fish", "0012345", 5, 15),
                  ("bowling", "yid_d", 30, 40), ("abseiling", "yid_gone", 1, 11), ("catching fish", "yid_p2", 2, 12)]
    val_rows = [("bowling", "yid_v1", 0, 10), ("abseiling", "yid_v2", 7, 17)]

    def csv(rows, split):
        lines = ["label,youtube_id,time_start,time_end,split,is_cc"]
        lines += [f"{lab},{y},{s},{e},{split},0" for lab, y, s, e in rows]
        return ("\n".join(lines) + "\n").encode()

    def name(y, s, e):
        return f"{y}_{s:06d}_{e:06d}.mp4"

    server.files[f"{base}/annotations/train.csv"] = csv(train_rows, "train")
    server.files[f"{base}/annotations/val.csv"] = csv(val_rows, "validate")
    parts = {
        "part_0.tar.gz": {name(*r[1:]): f"train {r[1]}".encode() for r in train_rows[:2]},
        "part_1.tar.gz": {f"sub/{name(*r[1:])}": random.Random(r[1]).randbytes(5000) for r in train_rows[2:4]},
        "part_2.tar.gz": {name(*train_rows[5][1:]): b"beyond max_archives"},
    }
    for fname, members in parts.items():
        server.files[f"{base}/train/{fname}"] = tar_bytes(members)
    server.files[f"{base}/train/k400_train_path.txt"] = "\n".join(
        server.url(f"{base}/train/{f}") for f in parts).encode() + b"\n"
    server.files[f"{base}/val/part_0.tar.gz"] = tar_bytes({name(*r[1:]): b"val" for r in val_rows})
    server.files[f"{base}/val/k400_val_path.txt"] = b"part_0.tar.gz\n"  # relative entry
    server.files[f"{base}/replacement_for_corrupted_k400.tgz"] = tar_bytes(
        {f"replacement_for_corrupted_k400/{name('yid_a', 10, 20)}": b"fixed copy"})
    assert len(server.files[f"{base}/train/part_1.tar.gz"]) > 5000  # random bytes: gzip cannot shrink them
    server.drop_after[f"{base}/train/part_1.tar.gz"] = 3000  # one interrupted transfer, resumed
    return server.url(base)


def k400_params(base_url: str, **download):
    from amflow.params_io import validate

    return validate({
        "name": "k400-test",
        "datasets": {"k400": {"source": "kinetics400", "val_fraction": 0.25,
                              "download": {"base_url": base_url, "workers": 2, "retries": 2, "backoff_s": 0,
                                           "timeout_s": 10, "max_archives": 2, **download}}},
        "table_datasets": ["k400"],
        "backbone": {"weights": "random"},
    })


def test_kinetics400_end_to_end(server, tmp_path):
    from amflow.stages.prepare import prepare_dataset

    base = k400_tree(server)
    out = tmp_path / "data" / "k400"
    info = prepare_dataset(k400_params(base), "k400", out)

    assert (out / "classes.txt").read_text().splitlines() == ["abseiling", "bowling", "catching fish"]
    train, val, test = (pd.read_csv(out / "annotations" / f"{s}.csv", dtype={"youtube_id": str})
                        for s in ("train", "val", "test"))
    # val is a 25% holdout of train (1 of the 4 clips found); test is the official val split.
    assert len(val) == 1 and set(val["video"]).isdisjoint(train["video"])
    train = pd.concat([train, val], ignore_index=True)
    assert sorted(train["youtube_id"]) == sorted(["yid_a", "-yid_b", "0012345", "yid_d"])
    by_id = train.set_index("youtube_id")
    assert by_id.loc["0012345", "label"] == 2 and by_id.loc["0012345", "label_name"] == "catching fish"
    assert by_id.loc["yid_a", "label"] == 1 and by_id.loc["-yid_b", "label"] == 0
    # The replacement archive wins for the clip it holds.
    assert by_id.loc["yid_a", "video"] == "videos/replacement/replacement_for_corrupted_k400/yid_a_000010_000020.mp4"
    for video in train["video"]:
        assert (out / video).is_file()
    assert (out / by_id.loc["0012345", "video"]).read_bytes() == random.Random("0012345").randbytes(5000)
    # The interrupted tarball was resumed with a Range request.
    assert server.gets("/kinetics/400/train/part_1.tar.gz")[-1]["Range"] == "bytes=3000-"
    # max_archives=2: the third tarball is never fetched; its clip and the dead one are reported missing.
    assert server.gets("/kinetics/400/train/part_2.tar.gz") == []
    missing = pd.read_csv(out / "missing.csv")
    assert sorted(missing[missing["split"] == "train"]["video"]) == [
        "videos/train/yid_gone_000001_000011.mp4", "videos/train/yid_p2_000002_000012.mp4"]
    assert sorted(test["youtube_id"]) == ["yid_v1", "yid_v2"]  # test_source: val
    assert info["counts"] == {"train": 3, "val": 1, "test": 2}
    assert info["missing"] == {"train": 2, "val": 0, "test": 0}
    assert info["test_from"] == "official val split"
    assert info["replaced_by_replacement_archive"] == 1
    assert json.loads((out / "dataset.json").read_text()) == json.loads(json.dumps(info))
    assert not list((out / "downloads").rglob("*.tar.gz"))  # keep_archives: false
    assert not list((out / "downloads").rglob("*.part"))

    # A rerun downloads nothing: CSVs and lists are cached, archives known extracted by their markers.
    n_requests = len(server.requests)
    again = prepare_dataset(k400_params(base), "k400", out)
    assert len(server.requests) == n_requests
    assert again["counts"] == info["counts"]


def test_kinetics400_checksum_from_params_is_enforced(server, tmp_path):
    from amflow.stages.prepare import prepare_dataset

    base = k400_tree(server)
    server.drop_after.clear()
    out = tmp_path / "k400"
    with pytest.raises(AmflowError, match=r"part_0\.tar\.gz.*md5 checksum mismatch"):
        prepare_dataset(k400_params(base, splits=["val"], checksums={"val/part_0.tar.gz": "md5:" + "f" * 32}),
                        "k400", out)
    assert not (out / "dataset.json").exists()
    assert not (out / "downloads" / "val" / "part_0.tar.gz").exists()
