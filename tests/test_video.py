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


@pytest.mark.parametrize("lossless", [False, True])
def test_sampled_frame_count_equals_the_frames_decoded(tmp_path, lossless):
    """The count from packet timestamps (no decoding) equals what ``iter_video_timed`` yields
    (H.264 with B-frames reorders packets; the count sorts their timestamps)."""
    from lmms_rekv.io.video import sampled_frame_count

    clip = write_video(str(tmp_path / "c.mp4"), synthetic_frames(9.25, fps=4, size=32), fps=4, lossless=lossless)
    for fps, cap, start, end in [(0.5, None, 0.0, None), (1.5, None, 0.0, None), (4, None, 0.0, None), (4, 5, 0.0, None),
                                 (2, None, 3.0, None), (2, None, 1.0, 6.0), (3, 4, 2.0, 8.0)]:
        want = len(list(iter_video_timed(clip, fps, cap, start_time=start, end_time=end)))
        assert sampled_frame_count(clip, fps, cap, start, end) == want, (fps, cap, start, end)
