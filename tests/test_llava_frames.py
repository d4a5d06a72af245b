"""lmms-eval ``llava_onevision``'s video path, reproduced without LLaVA-NeXT: which frames it reads
(``max_frames_num`` by ``np.linspace`` over the frame count, both of its readers) against
lmms-eval's own reader functions, and LLaVA-NeXT's SigLIP preprocessing against the
transformers image functions it calls. (Against the whole llava_onevision class through the
CLI: tests/test_llava_reference.py.)"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lmms_rekv.io.preprocess import LlavaNextFrames
from lmms_rekv.io.video import iter_video_uniform, uniform_indices, write_video

COUNTS = [9, 13, 16, 21, 5]  # frames in the file; 5 < 8: decord's linspace repeats indices


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava-frames")
    rng = np.random.default_rng(3)
    return {n: write_video(str(root / f"c{n}.avi"), rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8), fps=4, lossless=True)
            for n in COUNTS}


def _llava_onevision_load_video():
    with warnings.catch_warnings():  # the module sets a global "ignore" filter on import
        from lmms_eval.models.simple.llava_onevision import Llava_OneVision
    return Llava_OneVision.load_video


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("max_frames_num", [8, 3])
def test_decord_frames_are_those_llava_onevision_reads(clips, count, max_frames_num):
    load_video = _llava_onevision_load_video()
    theirs = load_video(None, clips[count], max_frames_num)  # decord: linspace over len(VideoReader)
    ours = np.stack([f for _, f in iter_video_uniform(clips[count], max_frames_num, "decord")])
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
    assert uniform_indices(clips[count], max_frames_num)[-1] == count - 1  # the last frame is included


@pytest.mark.parametrize("count", COUNTS)
def test_pyav_frames_are_those_lmms_eval_read_video_reads(clips, count):
    from lmms_eval.models.model_utils.load_video import read_video

    theirs = read_video(clips[count], num_frm=8)
    ours = np.stack([f for _, f in iter_video_uniform(clips[count], 8, "pyav")])
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_sixteen_frames_sampled_to_eight_end_on_the_last_one(clips):
    """Where the rule matters: 16 frames, 8 wanted -- linspace ends on frame 15 (a time grid
    over the same span ended on frame 14)."""
    assert uniform_indices(clips[16], 8) == [0, 2, 4, 6, 8, 10, 12, 15]


@pytest.mark.parametrize("size", [(720, 1280), (97, 131), (384, 384), (40, 600)])
def test_llava_next_pixels_equal_the_transformers_functions_it_calls(size):
    """LLaVA-NeXT's ``SigLipImageProcessor.preprocess``: ``resize`` (Pillow bicubic), ``rescale``
    (1/255), ``normalize`` (0.5/0.5), channels first -- each a transformers function."""
    from functools import reduce

    from transformers.image_transforms import normalize, rescale, resize, to_channel_dimension_format
    from transformers.image_utils import ChannelDimension, PILImageResampling

    frames = np.random.default_rng(sum(size)).integers(0, 256, (3, *size, 3), dtype=np.uint8)
    first = ChannelDimension.FIRST
    steps = [lambda x: resize(x, size=(384, 384), resample=PILImageResampling.BICUBIC, data_format=first),
             lambda x: rescale(x, scale=1 / 255, data_format=first),
             lambda x: normalize(x, mean=(0.5,) * 3, std=(0.5,) * 3, data_format=first),
             lambda x: to_channel_dimension_format(x, first, input_channel_dim=first)]
    theirs = np.stack([reduce(lambda x, f: f(x), steps, frame) for frame in frames])
    ours = LlavaNextFrames((384, 384))(frames)
    assert ours.dtype == torch.float32 and ours.shape == (3, 3, 384, 384)
    assert np.array_equal(ours.numpy(), theirs)


def test_the_drop_in_samples_and_loads_as_llava_onevision(tiny_dir):
    """``max_frames_num`` alone: llava_onevision's linspace and its float16; ``fps``: the time
    grid; ``dtype=`` wins."""
    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV

    def uniform(lm):
        return lm.runner.sampling().uniform

    lm = ReKVLlavaOV(pretrained=tiny_dir, device="cpu", max_frames_num="8", conv_template="qwen_1_5")
    assert (uniform(lm).count, uniform(lm).backend) == (8, "decord") and lm.engine.dtype == torch.float16
    assert lm.upstream.name == "llava_onevision"
    lm = ReKVLlavaOV(pretrained=tiny_dir, device="cpu", max_frames_num="8", video_decode_backend="pyav", dtype="float32")
    assert uniform(lm).backend == "pyav" and lm.engine.dtype == torch.float32
    lm = ReKVLlavaOV(pretrained=tiny_dir, device="cpu", max_frames_num="8", fps="1", dtype="float32")
    assert uniform(lm) is None and (lm.runner.settings.fps, lm.runner.settings.max_frames) == (1.0, 8)
    lm = ReKVLlavaOV(pretrained=tiny_dir, device="cpu", dtype="auto")
    assert uniform(lm) is None and lm.engine.dtype == torch.float32  # not the drop-in: our defaults
    assert lm.upstream.name == "rekv"
