"""Video I/O with PyAV: sampling rate, caps, time limits and clear errors."""

import numpy as np
import pytest

from lmms_rekv.io.video import VideoError, iter_video_timed, read_video, synthetic_frames, video_duration, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(str(tmp_path_factory.mktemp("v") / "clip.mp4"), synthetic_frames(10, fps=4, size=32), fps=4)


def test_sampling(clip):
    assert video_duration(clip) == pytest.approx(10.0)
    assert read_video(clip, fps=0.5).shape == (5, 32, 32, 3)
    assert read_video(clip, fps=4).shape[0] == 40
    times = [t for t, _ in iter_video_timed(clip, fps=1, end_time=3.0)]
    assert times == pytest.approx([0, 1, 2, 3])
    capped = [t for t, _ in iter_video_timed(clip, fps=4, max_frames=5)]
    assert len(capped) == 5 and capped[-1] > 7  # uniform over the whole video, not its start
    assert [t for t, _ in iter_video_timed(clip, fps=1, start_time=6.0)] == pytest.approx([6, 7, 8, 9])


def test_errors(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        read_video(str(tmp_path / "nope.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 300)
    with pytest.raises(VideoError):
        read_video(str(bad))
    with pytest.raises(ValueError, match="fps"):
        read_video(str(bad), fps=0)
    clip = write_video(str(tmp_path / "c.mp4"), np.zeros((4, 16, 16, 3), np.uint8), fps=4)
    with pytest.raises(VideoError, match="no frames"):
        list(iter_video_timed(clip, start_time=50.0))  # nothing sampled after the end
