"""Invariant 5: after the patch context exits the model is the vanilla model again."""

import copy

import pytest
import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _outputs(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


class Boom(Exception):
    pass


def test_patch_is_reversible(load, frames):
    engine = load(window_tokens=32, topk_frames=2, chunk_frames=3)
    model = engine.model
    pristine = copy.deepcopy(model)
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    impl_text = model.config.text_config._attn_implementation
    impl_vision = model.config.vision_config._attn_implementation
    with torch.inference_mode():  # transformers adds its output-capturing hooks on the first vision forward
        model.model.get_video_features(pixel_values_videos=engine.processor(torch.from_numpy(frames(1)))[None])
    hooks_before = _hook_count(model)

    session = engine.new_session()
    counts = []

    class Probe:
        def attend(self, layer, q, k, v, q_pre, k_pre, scaling):
            counts.append(_hook_count(model))
            assert model.config.text_config._attn_implementation == engine.patch.name
            assert model.config.vision_config._attn_implementation == impl_vision  # vision tower untouched
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)

    with engine.patch.routed(Probe()):
        _outputs(model, ids)
    assert counts and counts[0] == hooks_before + 2 * len(engine.patch.capture)

    session.add_frames(frames(5))
    session.ask("what?", max_new_tokens=3)
    # nested: a second session encodes while the first one's routing is active
    other = engine.new_session()
    with engine.patch.routed(Probe()):
        other.add_frames(frames(3))
        other.flush()
        assert engine.patch.active
    # an exception inside the block
    with pytest.raises(Boom):
        with engine.patch.routed(Probe()):
            raise Boom()
    # an exception from inside the model's forward
    class Failing:
        def attend(self, *args):
            raise Boom()

    with pytest.raises(Boom):
        with engine.patch.routed(Failing()):
            _outputs(model, ids)

    assert not engine.patch.active and engine.patch.hook_count == 0
    assert _hook_count(model) == hooks_before
    assert model.config.text_config._attn_implementation == impl_text
    assert model.config.vision_config._attn_implementation == impl_vision
    assert engine.patch.name not in AttentionInterface._global_mapping
    assert engine.patch.name not in ALL_ATTENTION_FUNCTIONS
    assert torch.equal(_outputs(model, ids), _outputs(pristine, ids))
    pixels = engine.processor(torch.from_numpy(frames(2)))
    video_ids = engine.vanilla_input_ids("what?", 2)
    with torch.inference_mode():
        a = model(input_ids=video_ids, pixel_values_videos=pixels[None]).logits
        b = pristine(input_ids=video_ids, pixel_values_videos=pixels[None]).logits
    assert torch.equal(a, b)


def test_attention_outside_routing_is_an_error(load):
    engine = load()
    with pytest.raises(RuntimeError, match="outside a routed forward"):
        engine.patch._attention(engine.language_model.layers[0].self_attn, None, None, None, None)
