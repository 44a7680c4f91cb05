"""Video decoding: decord and PyAV agree, resizing, and every kind of broken file is reported."""
from __future__ import annotations

import os
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest

from video_files import write_mp4
from amflow.data import video as video_mod
from amflow.data.video import VideoDecodeError, read_frames, read_video, resolve_backend, video_info
from amflow.errors import AmflowError

decord = pytest.importorskip("decord")


def textured(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A blurred-noise texture panning 1 px down and 2 px right per frame."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((h + 2 * t, w + 2 * t, 3)), (0, 0), 2)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)  # smooth but full contrast
    return np.stack([base[i:i + h, 2 * i:2 * i + w] for i in range(t)])


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "landscape.mp4"
    write_mp4(path, textured(20, 48, 64))
    return path


@pytest.mark.parametrize("short_side", [None, 24, 40])
def test_decord_and_pyav_give_identical_frames(clip_path, short_side):
    a, fps_a = read_video(clip_path, short_side, backend="decord")
    b, fps_b = read_video(clip_path, short_side, backend="pyav")
    assert a.dtype == np.uint8 and a.shape[0] == 20 and a.shape[-1] == 3
    np.testing.assert_array_equal(a, b)
    assert fps_a == pytest.approx(25.0) and fps_b == pytest.approx(25.0)


def test_decoded_frames_are_close_to_the_source(tmp_path):
    src = textured(10, 48, 64, seed=3)
    write_mp4(tmp_path / "s.mp4", src)
    got, _ = read_video(tmp_path / "s.mp4")
    loss = np.abs(got.astype(int) - src).mean()
    assert loss < 10  # codec loss only (x264 default CRF, 4:2:0 chroma on a colour-noise texture)...
    assert np.abs(got[::-1].astype(int) - src).mean() > 3 * loss  # ...and the frames come in order


def test_resize_short_side_keeps_aspect(tmp_path, clip_path):
    full, _ = read_video(clip_path)
    small, _ = read_video(clip_path, short_side=24)
    assert small.shape == (20, 24, 32, 3)
    np.testing.assert_array_equal(small[5], cv2.resize(full[5], (32, 24), interpolation=cv2.INTER_AREA))
    write_mp4(tmp_path / "portrait.mp4", textured(6, 64, 40))
    for backend in ("decord", "pyav"):
        p, _ = read_video(tmp_path / "portrait.mp4", short_side=30, backend=backend)
        assert p.shape == (6, 48, 30, 3)


def test_auto_backend_recovers_from_decord_width_bug(tmp_path):
    # decord 0.6.0 mis-sizes frames 48 px wide (dmlc/decord#336); auto mode retries with PyAV.
    src = textured(5, 64, 48)
    write_mp4(tmp_path / "w48.mp4", src)
    with pytest.raises(VideoDecodeError):
        read_video(tmp_path / "w48.mp4", backend="decord")
    frames, fps = read_video(tmp_path / "w48.mp4", backend="auto")
    np.testing.assert_array_equal(frames, read_video(tmp_path / "w48.mp4", backend="pyav")[0])
    assert frames.shape == (5, 64, 48, 3) and fps == pytest.approx(25.0)
    assert video_info(tmp_path / "w48.mp4") == (5, pytest.approx(25.0), 64, 48)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_read_frames_and_info(clip_path, backend):
    full, _ = read_video(clip_path, backend=backend)
    idx = [7, 0, 19, 7]
    np.testing.assert_array_equal(read_frames(clip_path, idx, backend=backend), full[idx])
    assert video_info(clip_path, backend=backend) == (20, pytest.approx(25.0), 48, 64)
    with pytest.raises(IndexError):
        read_frames(clip_path, [20], backend=backend)


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, clip_path):
    d = tmp_path_factory.mktemp("broken")
    data = clip_path.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "text.mp4").write_bytes(b"this is not a video at all\n" * 20)
    (d / "empty.mp4").write_bytes(b"")
    # A valid container whose video stream holds no frames at all.
    with av.open(str(d / "noframes.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    # Moov atom first (faststart), then the stream cut: the container opens, the data runs out.
    frames = textured(40, 48, 64, seed=1)
    with av.open(str(d / "full_fs.mp4"), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    fs = (d / "full_fs.mp4").read_bytes()
    (d / "cut_stream.mp4").write_bytes(fs[: int(len(fs) * 0.6)])
    return d


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
@pytest.mark.parametrize("name", ["truncated.mp4", "text.mp4", "empty.mp4", "noframes.mp4", "cut_stream.mp4",
                                  "missing.mp4"])
def test_broken_files_raise_video_decode_error(broken_files, backend, name):
    with pytest.raises(VideoDecodeError) as info:
        read_video(broken_files / name, backend=backend)
    assert name in str(info.value)
    assert isinstance(info.value, AmflowError)  # the CLI prints it without a traceback


def test_backend_choice(monkeypatch, clip_path):
    monkeypatch.delenv("AMFLOW_VIDEO_BACKEND", raising=False)
    assert resolve_backend() == "auto"
    monkeypatch.setenv("AMFLOW_VIDEO_BACKEND", "pyav")
    assert resolve_backend() == "pyav"

    def no_decord(*a, **k):
        raise AssertionError("decord used although pyav was forced")

    monkeypatch.setattr(video_mod, "_chunks_decord", no_decord)
    frames, _ = read_video(clip_path)
    assert frames.shape == (20, 48, 64, 3)
    monkeypatch.setenv("AMFLOW_VIDEO_BACKEND", "ffmpeg-cli")
    with pytest.raises(AmflowError, match="unknown video backend"):
        resolve_backend()


def test_falls_back_to_pyav_without_decord(monkeypatch):
    monkeypatch.delenv("AMFLOW_VIDEO_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` raise ImportError
    assert resolve_backend() == "pyav"
    with pytest.raises(AmflowError, match="not installed"):
        resolve_backend("decord")


def test_decords_native_log_lines_stay_off_the_terminal(clip_path, tmp_path):
    """Decoding a good file and one that is not a video, in a fresh process: stderr holds the one-line
    error naming the file and nothing of decord's C++ or FFmpeg's logging, and still works afterwards."""
    bad = tmp_path / "not_a_video.mp4"
    bad.write_text("no video here\n")
    code = ("import sys; from amflow.data.video import read_video, video_info\n"
            f"print(video_info({str(clip_path)!r}))\n"
            f"try:\n    read_video({str(bad)!r})\nexcept Exception as exc:\n    print('caught', exc, file=sys.stderr)\n"
            "import os; os.write(2, b'still here\\n')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, video_mod.BACKEND_ENV: "auto"})
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith(f"caught {bad}: cannot decode video") and lines[1:] == ["still here"], out.stderr
