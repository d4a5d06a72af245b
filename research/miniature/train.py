"""Training the miniature from scratch on CPU, with full attention only (never retrieval in
the loop: what the benchmark measures about retrieval must transfer to real checkpoints,
which ReKV uses training-free).

What makes it learn in minutes: a curriculum that grows the video only when the current
length is mastered (start at 2 frames with colour questions only -- on 2-3 frames the other
kinds can be answered without finding the asked object, so they would not teach it --
mix every kind in from 8 frames, and grow x1.5 only when the running accuracy of every kind
passes 85 %), kinds sampled in proportion to how far each is from mastered, and auxiliary
losses -- every frame's visual tokens are classified against the language model's input
embeddings (tied with the output) of its object and colour words, every frame's tokens
after the first decoder layer against the previous frame's object (temporal order), the
answer is predicted from the final hidden state at the question's last object word and
(``hop_all``) for ``color``/``before`` already after the second layer there, and for
``same`` each named object's colour is read at its own word after the second layer and
(``gather_aux``) both colours at the answering position after the last layer's attention,
which is left to compare them. The shipped weights predate ``hop_all``/``gather_aux`` (both
off in their log); the recipe with them reaches 16 frames on every seed tried.

``TrainConfig.world`` picks the synthetic world (``build.WORLDS``): ``"tiled"`` (the shipped
miniature's) or ``"video"`` (``video_world``: 32-pixel frames, 16 tokens each, objects on a
part of the frame). A world with ``token_labels`` gets per-token targets instead of per-frame
ones: perception on the tokens an object touches (background tokens carry none), and -- after
the *second* layer, since a visit spans several frames -- the previous visit's object
(``prev``) and the objects that left since the previous entry (``left``, multi-label: the key
that ``entered_after`` is answered by); ``hop_all`` then covers only the world's
``ONE_HOP`` kinds. Such a world also gets ``bind_aux`` (``bind_loss``): attention
supervision of one head that ties the question's object word (first layer) and the answering
position (last layer) to the tokens of the asked object. Without it the video world stalls at
3 frames: with two objects on screen the model reads the colour of either (50 %) instead of
matching the asked object's tokens, so colour never passes 85 % and the other kinds never mix in.
Past 8 frames the video world's ``before`` / ``entered_after`` stalled near 70 % while the
needle's tokens carried the right previous object 95 % of the time: the order targets lived in
the object embeddings' own directions, so the answering position, asked about X, attended to
X's tokens *and* the next visit's (whose ``prev`` is X) and answered one visit off
(``order_rotation``: each order target read through its own fixed rotation instead).
``init`` continues a saved run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lmms_rekv.miniature import world

from . import build

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (time-budgeted)."""

    minutes: float = 15.0
    seed: int = 0
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    decay_fraction: float = 0.3  # cosine decay over the last 30 % of the time budget
    start_frames: int = 2
    max_frames: int = 16
    grow: float = 1.5
    grow_threshold: float = 0.85
    grow_on: Sequence[str] = ("color",)  # kinds whose running accuracy gates growth below mix_from_frames
    grow_on_mixed: Optional[Sequence[str]] = None  # ... and from mix_from_frames on (None: every kind)
    kinds: Optional[Sequence[str]] = None  # None: the world's KINDS
    kind_weights: Optional[Sequence[float]] = None  # one per kind; None = adaptive (see kind_weights())
    min_kind_weight: float = 0.1
    mix_from_frames: int = 8  # colour questions only below this length (they teach binding a question to a frame)
    aux_weight: float = 1.0
    noise: float = 6.0
    threads: Optional[int] = None
    clip_grad: Optional[float] = 1.0
    prev_aux: bool = True
    hop_aux: bool = True  # "same": each named object's colour readable at its word after the second layer
    hop_all: bool = True  # "color"/"before": the answer readable at the question's object word after the second layer
    gather_aux: bool = True  # "same": both named colours readable at the answer position after the last layer's attention
    max_steps: Optional[int] = None  # stop after this many steps even if time is left (tests)
    world: str = "tiled"  # the synthetic world (build.WORLDS): "tiled" or "video"
    # per-token worlds (video): attention supervision that binds the question's object word, and
    # the answering position, to the tokens of the asked object (see bind_loss); None: on for a
    # world with token_labels, off for the tiled world
    bind_aux: Optional[bool] = None
    bind_weight: float = 1.0  # bind_loss's weight (times aux_weight)
    # per-token worlds: the order targets (``prev``, ``left``) are read through fixed random
    # rotations of the object embeddings (``order_basis``, one per target) instead of the
    # embeddings themselves, so that "this token shows X", "this visit came right after X" and
    # "X left before this visit" are three directions: in one space a question about X also
    # matches the tokens that carry X as another target, and the answer read from them is one
    # visit off. None: on for a world with token_labels (the tiled world's recipe is unchanged)
    order_rotation: Optional[bool] = None
    order_bases: int = 2  # 1: ``prev`` and ``left`` share one rotation (the video miniature's second stage)
    # per-token worlds: probability that a training video is redrawn until the asked object shares
    # the screen with another object on some frame (so reading "whatever is on screen" stops
    # paying); tried on the video world at 0.5 and slower than without, hence off
    crowd: float = 0.0
    # continue from a saved miniature (its weights and tokenizer; the architecture read from it)
    # instead of a fresh one: the curriculum starts at ``start_frames``, the LR warms up again
    init: Optional[str] = None

    def resolved(self) -> "TrainConfig":
        """This config with the world's defaults filled in (``kinds``, ``grow_on_mixed``,
        ``bind_aux``)."""
        source = build.world_module(self.world)
        kinds = tuple(self.kinds) if self.kinds is not None else tuple(source.KINDS)
        per_token = hasattr(source, "token_labels")
        return replace(self, kinds=kinds, grow_on_mixed=kinds if self.grow_on_mixed is None else tuple(self.grow_on_mixed),
                       bind_aux=per_token if self.bind_aux is None else self.bind_aux,
                       order_rotation=per_token if self.order_rotation is None else self.order_rotation)


class Layout:
    """Token layout of the miniature's prompts: the family's chat template split at its video
    placeholder; ``qwen``: the Qwen family's video part (``families.QwenVideo``), else LLaVA-OV's;
    ``world_name``: the world whose episodes it lays out (``build.WORLDS``)."""

    def __init__(self, tokenizer, frame_tokens: int, family: str = "llava_onevision", qwen=None,
                 world_name: str = "tiled") -> None:
        from .families import chat_template, video_token

        self.tokenizer, self.frame_tokens, self.template = tokenizer, frame_tokens, chat_template(family)
        self.family, self.qwen, self.video_token = family, qwen, video_token(family)
        self.world_name, self.world = world_name, build.world_module(world_name)
        self.words = build.word_ids(tokenizer, world_name)
        self.video_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.outer_wrapper = True  # Qwen3-VL: whether the installed processor keeps the template's video wrapper
        if family == "qwen3_vl" and qwen is not None:
            from lmms_rekv.patches.qwen3_vl import keeps_outer_wrapper

            from .families import QWEN_PATCH

            start = tokenizer.convert_tokens_to_ids("<|vision_start|>")
            self.outer_wrapper = keeps_outer_wrapper(tokenizer, qwen.processor, self.template, start, qwen.grid * QWEN_PATCH, 1)
        self.prefix = self._ids(self._split("?")[0])
        self.object_ids = torch.tensor([self.words["object_q"][w] for w in self.world.OBJECTS])
        self.color_ids = torch.tensor([self.words["answer"][w] for w in self.world.COLORS])
        self.answer_sets = {k: torch.tensor([self.words["answer"][w] for w in ws]) for k, ws in self.world.answer_words().items()}

    @property
    def newlines(self) -> int:
        """Video tokens after the frames' own: LLaVA-OV's ``image_newline`` (1); Qwen: none."""
        return 0 if self.qwen is not None else 1

    def rotary_function(self):
        """The family's ``apply_rotary_pos_emb`` (M-RoPE tables come from the model's own rotary;
        LLaVA-OV's text tower is Qwen2)."""
        import importlib

        name = "qwen2" if self.family == "llava_onevision" else self.family
        return importlib.import_module(f"transformers.models.{name}.modeling_{name}").apply_rotary_pos_emb

    def _ids(self, text: str) -> List[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _split(self, question: str):
        from lmms_rekv.io.prompt import split_prompt

        before, after = split_prompt(self.tokenizer, self.template, question, self.video_token)
        if not self.outer_wrapper:
            from lmms_rekv.patches.qwen3_vl import without_outer_wrapper

            ids = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")]
            before, after = without_outer_wrapper(before, after, self.tokenizer, *ids)
        return before, after

    def video_ids(self, frames: int) -> List[int]:
        if self.qwen is not None:
            return self.qwen.video_ids(frames)
        return [self.video_id] * (frames * self.frame_tokens + 1)  # LLaVA-OV: + the newline

    def sequence(self, frames: int, question: world.Question):
        """(ids, index of the answer token, index of the question's last object word, index
        of its first object word)."""
        suffix = self._ids(self._split(question.text)[1])
        ids = self.prefix + self.video_ids(frames) + suffix
        objects = {self.words["object_q"][w] for w in question.objects}
        at = [len(ids) - len(suffix) + i for i, t in enumerate(suffix) if t in objects]
        answer_at = len(ids)
        ids = ids + [self.words["answer"][question.answer], self.eos_id]
        return ids, answer_at, at[-1], at[0]


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, L, 3, S, S) normalized
    ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T)
    answer_at: torch.Tensor  # (B,) index of the answer token
    anchor: torch.Tensor  # (B,) index of the question's last object word
    first: torch.Tensor  # (B,) index of the question's first object word
    objects: torch.Tensor  # (B, L); a world with token_labels: (B, L, frame_tokens), -1 on tokens without an object
    colors: torch.Tensor  # (B, L); ... (B, L, frame_tokens)
    kinds: List[str]
    named_colors: torch.Tensor  # (B, 2) colours of the question's first and last named objects
    prev: Optional[torch.Tensor] = None  # token_labels worlds: (B, L, frame_tokens) the previous visit's object, -1 none
    left: Optional[torch.Tensor] = None  # token_labels worlds: (B, L, frame_tokens, objects) 0/1, objects that left since the previous entry
    named: Optional[torch.Tensor] = None  # (B, 2) the question's first and last named objects (object indices)
    asked_frames: Optional[torch.Tensor] = None  # (B, L) bool: the frames the answer is read from (Question.frames)


def make_batch(rng: np.random.Generator, layout: Layout, processor, frames: int, size: int,
               kinds: Sequence[str], weights: Optional[Sequence[float]], noise: float, depth: Optional[float] = None,
               crowd: float = 0.0) -> Batch:
    """``size`` episodes of ``frames`` frames of ``layout.world``, one question each (kind
    drawn with ``weights``). ``crowd`` (worlds with ``on_screen``): with this probability an
    episode is redrawn until one of the question's objects is on screen together with another
    object on some frame (0: no extra random draw at all)."""
    pixels, seqs, objects, colors, chosen, needle_colors, prev, left, named_objects, asked = [], [], [], [], [], [], [], [], [], []
    p = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
    source = layout.world
    per_token = hasattr(source, "token_labels")
    misses = 0
    while len(seqs) < size:
        kind = kinds[int(rng.choice(len(kinds), p=p))]
        episode = source.make_episode(rng, frames, kinds=(kind,), depth=depth)
        if not episode.questions:
            misses += 1
            if misses > 100 * size:  # e.g. the video world's "entered_after" on 3 frames: never askable
                raise ValueError(f"{frames}-frame videos of this world hardly allow {kinds} questions")
            continue  # e.g. "same" on a 1-frame video
        if crowd and rng.random() < crowd and not _crowded(source, episode):
            misses += 1
            if misses > 100 * size:
                raise ValueError(f"{frames}-frame videos of this world hardly show two objects at once")
            continue
        if per_token:  # the video world: per-token targets; objects/colors of the episode are per visit
            pixels.append(processor(source.render(episode, rng, noise=noise)))
            labels = source.token_labels(episode)
            objects.append(labels["object"])
            colors.append(labels["color"])
            prev.append(labels["prev"])
            left.append(labels["left"])
        else:
            pixels.append(processor(source.render(episode.objects, episode.colors, rng, noise=noise)))
            objects.append(episode.objects)
            colors.append(episode.colors)
        seqs.append(layout.sequence(frames, episode.questions[0]))
        chosen.append(kind)
        named = [episode.objects.index(source.OBJECTS.index(o)) for o in episode.questions[0].objects]
        needle_colors.append([episode.colors[named[0]], episode.colors[named[-1]]])
        named_objects.append([episode.objects[named[0]], episode.objects[named[-1]]])
        asked.append(np.isin(np.arange(frames), episode.questions[0].frames))
    width = max(len(s[0]) for s in seqs)
    ids = torch.full((size, width), layout.pad_id, dtype=torch.long)
    mask = torch.zeros((size, width), dtype=torch.long)
    for i, (seq, *_) in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    stack = (lambda xs: torch.from_numpy(np.stack(xs))) if per_token else torch.tensor
    return Batch(torch.stack(pixels), ids, mask, torch.tensor([s[1] for s in seqs]), torch.tensor([s[2] for s in seqs]),
                 torch.tensor([s[3] for s in seqs]), stack(objects), stack(colors), chosen,
                 torch.tensor(needle_colors), stack(prev) if per_token else None, stack(left) if per_token else None,
                 torch.tensor(named_objects), torch.from_numpy(np.stack(asked)))


def _crowded(source, episode) -> bool:
    """Whether one of the question's objects shares the screen with another object on a frame."""
    for name in episode.questions[0].objects:
        visit = episode.visits[episode.objects.index(source.OBJECTS.index(name))]
        if any(len(episode.on_screen(f)) > 1 for f in visit.frames):
            return True
    return False


def forward(model, batch: Batch, video_id: int, first_layer: bool = False, layout: Optional[Layout] = None):
    """Vanilla LLaVA-OV computation (a Qwen family's with ``layout.qwen``), unrolled to
    expose the visual tokens: ``(hidden (B, T, H), visual tokens (B, L, frame_tokens, H))``,
    plus with ``first_layer`` the frame tokens' hidden states after the first decoder layer
    ``(B, L, frame_tokens, H)`` and every token's hidden state after the second ``(B, T, H)``."""
    if layout is not None and layout.qwen is not None:
        return layout.qwen.forward(model, batch.pixels, batch.ids, batch.mask, first_layer)
    inner = model.model
    feats = inner.get_video_features(pixel_values_videos=batch.pixels).pooler_output  # (B, L*ft+1, H)
    embeds = inner.language_model.embed_tokens(batch.ids)
    video = batch.ids == video_id
    embeds = embeds.masked_scatter(video[..., None], feats.to(embeds.dtype))
    out = inner.language_model(inputs_embeds=embeds, attention_mask=batch.mask, output_hidden_states=first_layer)
    b, frames = feats.shape[0], batch.pixels.shape[1]
    visual = feats[:, :-1].reshape(b, frames, -1, feats.shape[-1])
    if not first_layer:
        return out.last_hidden_state, visual
    after_first = out.hidden_states[1][video].reshape(b, -1, feats.shape[-1])[:, :-1].reshape(visual.shape)
    return out.last_hidden_state, visual, after_first, out.hidden_states[2]


def order_basis(hidden: int, seed: int = 20_261_204) -> torch.Tensor:
    """``(hidden, hidden)`` fixed random rotation (orthogonal) that an order target of a
    per-token world is read through (``TrainConfig.order_rotation``: ``seed`` for ``prev``,
    ``seed + 1`` for ``left``)."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(hidden, hidden, generator=generator))
    return q * torch.sign(torch.diagonal(r))[None]


def losses(model, batch: Batch, layout: Layout, prev: bool = True, hop: bool = False,
           hop_all: bool = False, gather: bool = False, bind: bool = False,
           rotation: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Answer loss (answer + EOS), perception loss, temporal-order loss (``prev``) and
    early-answer loss, plus accuracy. ``hop``: for ``same`` questions also read each named
    object's colour at its own word after the second layer; ``gather``: and both colours
    (multi-label) at the answer position after the last layer's attention, so that the
    position that answers collects them to compare. ``bind`` (per-token worlds): ``bind_loss``,
    returned as ``"bind"``."""
    attended: List[torch.Tensor] = []
    layers = model.model.language_model.layers
    last = layers[-1].self_attn
    handles = [last.register_forward_hook(lambda module, args, output: attended.append(output[0]))] if gather else []
    inputs: Dict[int, tuple] = {}
    if bind and batch.prev is not None:
        for index in (0, len(layers) - 1):
            handles.append(layers[index].self_attn.register_forward_pre_hook(
                lambda module, args, kwargs, index=index: inputs.__setitem__(index, (
                    kwargs["hidden_states"] if "hidden_states" in kwargs else args[0],
                    kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1])), with_kwargs=True))
    try:
        hidden, visual, after_first, middle = forward(model, batch, layout.video_id, first_layer=True, layout=layout)
    finally:
        for handle in handles:
            handle.remove()
    rows = torch.arange(batch.ids.shape[0])
    at = batch.answer_at
    logits = model.lm_head(torch.stack([hidden[rows, at - 1], hidden[rows, at]], dim=1))  # (B, 2, V)
    targets = torch.stack([batch.ids[rows, at], batch.ids[rows, at + 1]], dim=1)
    answer = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    table = model.model.language_model.embed_tokens.weight
    obj_logits = visual @ table[layout.object_ids].T  # (B, L, ft, 16)
    col_logits = visual @ table[layout.color_ids].T
    ft = visual.shape[2]
    order = torch.zeros((), dtype=hidden.dtype)
    if batch.prev is not None:  # per-token targets (video world): -1 where a token shows no object
        perception = _labelled_ce(obj_logits, batch.objects) + _labelled_ce(col_logits, batch.colors)
        if prev:  # after the second layer an object's tokens know the previous visit's object and who left since
            after_second = middle[batch.ids == layout.video_id].reshape(visual.shape[0], -1, visual.shape[-1])
            after_second = after_second[:, : after_second.shape[1] - layout.newlines].reshape(visual.shape)
            as_prev, as_left = (after_second, after_second) if rotation is None else (after_second @ rotation[0], after_second @ rotation[1])
            order = _labelled_ce(as_prev @ table[layout.object_ids].T, batch.prev)
            shown = batch.objects >= 0
            if shown.any():
                order = order + F.binary_cross_entropy_with_logits(as_left[shown] @ table[layout.object_ids].T, batch.left[shown])
    else:
        perception = F.cross_entropy(obj_logits.flatten(0, 2), batch.objects[..., None].expand(-1, -1, ft).flatten()) \
            + F.cross_entropy(col_logits.flatten(0, 2), batch.colors[..., None].expand(-1, -1, ft).flatten())
    if batch.prev is None and prev and visual.shape[1] > 1:  # temporal order: after the first layer a frame knows the previous frame's object
        prev_logits = after_first[:, 1:] @ table[layout.object_ids].T
        order = F.cross_entropy(prev_logits.flatten(0, 2), batch.objects[:, :-1, None].expand(-1, -1, ft).flatten())
    early_logits = model.lm_head(hidden[rows, batch.anchor])
    early = F.cross_entropy(early_logits, batch.ids[rows, at])
    two = torch.tensor([k == "same" for k in batch.kinds])
    if hop and two.any():  # "same": each named object's colour known at its word after the second layer
        mid = middle[rows[two]]
        at_words = torch.stack([mid[torch.arange(len(mid)), batch.first[two]], mid[torch.arange(len(mid)), batch.anchor[two]]], dim=1)
        early = early + F.cross_entropy((at_words @ table[layout.color_ids].T).flatten(0, 1), batch.named_colors[two].flatten())
    if gather and two.any():  # the answering position holds both named colours after the last attention
        pick, pos = rows[two], at[two] - 1
        post = middle[pick, pos] + attended[0][pick, pos]
        wanted = F.one_hot(batch.named_colors[two], len(layout.color_ids)).amax(dim=1).to(post.dtype)
        early = early + F.binary_cross_entropy_with_logits(post @ table[layout.color_ids].T, wanted)
    hop_kinds = getattr(layout.world, "ONE_HOP", None)
    direct = ~two if hop_kinds is None else torch.tensor([k in hop_kinds for k in batch.kinds])
    if hop_all and direct.any():  # one hop: the asked frame's colour / previous object at the object word, layer 2
        one = rows[direct]
        early = early + F.cross_entropy(model.lm_head(middle[one, batch.anchor[one]]), batch.ids[one, at[one]])
    correct = (logits[:, 0].argmax(-1) == targets[:, 0]).float()
    out = {"answer": answer, "perception": perception, "order": order, "early": early, "correct": correct}
    if inputs:
        out["bind"] = bind_loss(layers, inputs, batch, layout)
    return out


def bind_loss(layers, inputs: Dict[int, tuple], batch: Batch, layout: Layout) -> torch.Tensor:
    """Attention supervision for a per-token world, on head 0 only (the other heads are free):
    in the first layer each object word of the question attends to the tokens of that object,
    and in the last layer the position that answers attends to the tokens the answer is read
    from -- the asked object's (``color``, ``before``: its tokens carry the previous visit's
    object after the second layer), both named objects' (``same``), those that carry the
    asked object in their ``left`` target (``entered_after``), or the asked object's on the
    frames of its visit on screen (``now``: not its earlier visits). Each term is ``-log`` of the
    attention mass on the target tokens. ``inputs[layer] = (normed hidden states, rope)``."""
    apply_rotary_pos_emb = layout.rotary_function()
    b = batch.objects.shape[0]
    video = batch.ids == layout.video_id
    rows = torch.arange(b)

    def keys(tokens: torch.Tensor) -> torch.Tensor:  # (B, L, ft) bool -> (B, T) bool over the sequence
        out = torch.zeros_like(video)
        out[video] = torch.cat([tokens.reshape(b, -1), torch.zeros(b, layout.newlines, dtype=torch.bool)], dim=1).flatten()
        return out

    named = batch.named
    first_obj, last_obj = (batch.objects == named[:, :1, None]), (batch.objects == named[:, 1:, None])
    wanted = torch.stack([
        last_obj[i] | first_obj[i] if k == "same"
        else batch.left[i, ..., named[i, 0]] > 0 if k == "entered_after"
        else first_obj[i] & batch.asked_frames[i][:, None] if k == "now"
        else first_obj[i] for i, k in enumerate(batch.kinds)])
    plan = {0: [(batch.first, keys(first_obj)), (batch.anchor, keys(last_obj))],
            len(layers) - 1: [(batch.answer_at - 1, keys(wanted))]}
    total = torch.zeros(())
    for index, queries in plan.items():
        attn = layers[index].self_attn
        hidden, (cos, sin) = inputs[index]
        hd = attn.head_dim
        q, k = attn.q_proj(hidden)[..., :hd], attn.k_proj(hidden)[..., :hd]
        if hasattr(attn, "q_norm"):  # Qwen3-VL: per-head RMS norms before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rotary_pos_emb(q[:, None], k[:, None], cos, sin)
        q, k = q[:, 0], k[:, 0]  # (B, T, hd): query head 0 and its key head
        for position, target in queries:
            scores = (q[rows, position][:, None] * k).sum(-1) * attn.scaling  # (B, T)
            causal = torch.arange(k.shape[1])[None] <= position[:, None]
            logp = torch.log_softmax(scores.masked_fill(~(causal & batch.mask.bool()), float("-inf")), dim=-1)
            has = target.any(-1)
            if has.any():
                total = total - torch.logsumexp(logp[has].masked_fill(~target[has], float("-inf")), dim=-1).mean()
    return total


def _labelled_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the positions whose target is not -1 (0 when there are none)."""
    keep = targets >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], targets[keep])


def kind_weights(cfg: TrainConfig, running: Dict[str, float]) -> List[float]:
    """Sampling weight of each kind: the fixed ``cfg.kind_weights``, or (adaptive) how far the
    kind's running accuracy is from mastered, above chance -- ``1 - (acc - chance) / (1 - chance)``,
    at least ``min_kind_weight`` -- so the batch goes to the kinds not learned yet."""
    if cfg.kind_weights is not None:
        return list(cfg.kind_weights)
    chance = build.world_module(cfg.world).CHANCE
    kinds = cfg.kinds if cfg.kinds is not None else build.world_module(cfg.world).KINDS
    return [max(cfg.min_kind_weight, 1.0 - max(0.0, running[k] - chance[k]) / (1.0 - chance[k])) for k in kinds]


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then constant, then cosine decay over the last
    ``decay_fraction`` of the time budget."""
    scale = min(1.0, (step + 1) / cfg.warmup_steps)
    start = 1.0 - cfg.decay_fraction
    if progress > start:
        scale *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - start) / cfg.decay_fraction)))
    return cfg.lr * scale


def _layout(arch: build.Architecture, tokenizer, world_name: str = "tiled"):
    """(prompt layout, frames -> pixels) of the miniature's family, for world ``world_name``."""
    from lmms_rekv.io.preprocess import CheckpointFrames

    from .families import QwenVideo

    source = build.world_module(world_name)
    if hasattr(source, "token_labels") and arch.image_size != source.FRAME_SIZE:  # per-token targets need the world's grid
        raise ValueError(f"the {world_name} world's frames are {source.FRAME_SIZE} pixels but the vision tower's "
                         f"image_size is {arch.image_size}; use build.Architecture.for_world({world_name!r})")
    if arch.family == "llava_onevision":
        frame_tokens = math.ceil(arch.image_size / arch.patch_size / 2) ** 2
        if getattr(source, "FRAME_TOKENS", frame_tokens) != frame_tokens:
            raise ValueError(f"the {world_name} world labels {source.FRAME_TOKENS} tokens per frame, the architecture gives {frame_tokens}")
        return Layout(tokenizer, frame_tokens, world_name=world_name), CheckpointFrames.square(arch.image_size)
    qwen = QwenVideo(arch, tokenizer, frame_tokens=(arch.image_size // 8) ** 2)
    if getattr(source, "FRAME_TOKENS", qwen.frame_tokens) != qwen.frame_tokens:  # merged tokens: raster, 8 x 8 pixels each
        raise ValueError(f"the {world_name} world labels {source.FRAME_TOKENS} tokens per frame, the architecture gives {qwen.frame_tokens}")
    return Layout(tokenizer, qwen.frame_tokens, arch.family, qwen, world_name=world_name), qwen.pixels


def architecture_of(model) -> build.Architecture:
    """The miniature ``Architecture`` read back from a model (LLaVA-OV: every size but
    ``vocab_size``, the tokenizer's training target, which the model does not keep; a Qwen
    family: the sizes it was built with (``config.miniature``), else its name and the defaults)."""
    family = model.config.model_type
    if getattr(model.config, "miniature", None):
        return build.Architecture(**model.config.miniature)
    if family == "llava_onevision":
        vision, text = model.config.vision_config, model.config.text_config
        return build.Architecture(
            vision_hidden=vision.hidden_size, vision_layers=vision.num_hidden_layers, vision_heads=vision.num_attention_heads,
            image_size=vision.image_size, patch_size=vision.patch_size, hidden=text.hidden_size,
            layers=text.num_hidden_layers, heads=text.num_attention_heads, kv_heads=text.num_key_value_heads,
            ffn=text.intermediate_size,
            rope_theta=float((getattr(text, "rope_parameters", None) or {}).get("rope_theta", build.Architecture.rope_theta)))
    return build.Architecture(family=family)


def _start(cfg: TrainConfig, arch: Optional[build.Architecture]):
    """(model in train mode, tokenizer, architecture): fresh, or ``cfg.init``'s."""
    if cfg.init is None:
        arch = arch or build.Architecture.for_world(cfg.world)
        tokenizer = build.build_tokenizer(arch.vocab_size, seed=cfg.seed, family=arch.family, world_name=cfg.world)
        return build.build_model(arch, tokenizer, seed=cfg.seed).train(), tokenizer, arch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(cfg.init, dtype=torch.float32)
    return model.train(), AutoTokenizer.from_pretrained(cfg.init), architecture_of(model)


def _history_row(step: int, elapsed: float, frames: int, loss: torch.Tensor, out: Dict[str, torch.Tensor],
                 accuracy: float, per_kind: Dict[str, float]) -> dict:
    """One entry of the training log's ``history``."""
    return {"step": step, "seconds": round(elapsed, 1), "frames": frames, "loss": round(float(loss.detach()), 4),
            **{f"{k}_loss": round(float(out[k].detach()), 4) for k in ("answer", "perception", "order", "early", "bind") if k in out},
            "accuracy": round(accuracy, 3), "running": {k: round(v, 3) for k, v in per_kind.items()}}


def train(cfg: TrainConfig, arch: Optional[build.Architecture] = None, progress_bar: bool = True,
          snapshot: Optional[Callable[[object, object, build.Architecture, dict], None]] = None, every: float = 600.0):
    """Train a miniature from scratch (or from ``cfg.init``) on ``cfg.world``; returns
    ``(model, tokenizer, log)``. ``arch`` defaults to ``build.Architecture.for_world(cfg.world)``.
    ``snapshot(model, tokenizer, arch, log so far)`` is called every ``every`` seconds of
    training (a long run keeps its progress if it is stopped)."""
    cfg = cfg.resolved()
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    source = build.world_module(cfg.world)
    model, tokenizer, arch = _start(cfg, arch)
    layout, processor = _layout(arch, tokenizer, cfg.world)
    width = model.get_input_embeddings().weight.shape[1]
    rotation = (order_basis(width), order_basis(width, 20_261_205 if cfg.order_bases == 2 else 20_261_204)) if cfg.order_rotation else None
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = source.rng_for(source.TRAIN, cfg.seed)
    frames, running, step, history, snapshots = cfg.start_frames, 0.0, 0, [], []
    per_kind = {k: 0.0 for k in cfg.kinds}
    budget, start = cfg.minutes * 60.0, time.perf_counter()
    bar = tqdm(total=int(budget), desc="training the miniature", unit="s", disable=not progress_bar)
    while (elapsed := time.perf_counter() - start) < budget and (cfg.max_steps is None or step < cfg.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step, elapsed / budget)
        kinds, weights = (tuple(cfg.kinds), kind_weights(cfg, per_kind)) if frames >= cfg.mix_from_frames else (("color",), None)
        batch = make_batch(rng, layout, processor, frames, cfg.batch, kinds, weights, cfg.noise, crowd=cfg.crowd)
        out = losses(model, batch, layout, prev=cfg.prev_aux, hop=cfg.hop_aux, hop_all=cfg.hop_all, gather=cfg.gather_aux,
                     bind=cfg.bind_aux, rotation=rotation)
        loss = out["answer"] + cfg.aux_weight * (out["perception"] + out["order"] + out["early"] + cfg.bind_weight * out.get("bind", 0.0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()
        accuracy = float(out["correct"].mean())
        for kind in cfg.kinds:
            picked = [c for c, k in zip(out["correct"].tolist(), batch.kinds) if k == kind]
            if picked:
                per_kind[kind] = 0.9 * per_kind[kind] + 0.1 * float(np.mean(picked))
        running = min(per_kind[k] for k in (cfg.grow_on if frames < cfg.mix_from_frames else cfg.grow_on_mixed))
        if step % 20 == 0:
            history.append(_history_row(step, elapsed, frames, loss, out, accuracy, per_kind))
        if running > cfg.grow_threshold and frames < cfg.max_frames:
            frames, per_kind = min(cfg.max_frames, math.ceil(frames * cfg.grow)), {k: 0.0 for k in cfg.kinds}
            logger.info("step %d: %d frames", step, frames)
        step += 1
        if snapshot is not None and elapsed >= every * (1 + len(snapshots)):
            snapshots.append(step)
            snapshot(model, tokenizer, arch, {"config": asdict(cfg), "steps": step, "seconds": round(elapsed, 1),
                                              "final_frames": frames, "history": history, "snapshot": True})
            model.train()
        bar.n = min(int(elapsed), bar.total)
        bar.set_postfix(frames=frames, loss=f"{float(loss.detach()):.3f}", acc="/".join(f"{v:.2f}" for v in per_kind.values()), refresh=False)
        bar.update(0)
    bar.close()
    model.eval()
    log = {"config": asdict(cfg), "architecture": asdict(arch), "steps": step, "seconds": round(time.perf_counter() - start, 1),
           "final_frames": frames, "parameters": build.parameter_count(model), "history": history}
    return model, tokenizer, log


@torch.no_grad()
def evaluate(model, tokenizer, lengths: Sequence[int], videos: int, seed: int = 0, batch: int = 25,
             kinds: Optional[Sequence[str]] = None, noise: float = 6.0, world_name: str = "tiled") -> Dict[str, Dict[str, float]]:
    """Held-out accuracy with full attention (plain forward, first answer token):
    ``{kind: {str(length): accuracy}}`` over ``videos`` episodes of world ``world_name`` per
    kind (default: the world's ``KINDS``) and length."""
    source = build.world_module(world_name)
    kinds = source.KINDS if kinds is None else kinds
    layout, processor = _layout(architecture_of(model), tokenizer, world_name)
    results: Dict[str, Dict[str, float]] = {k: {} for k in kinds}
    for kind in kinds:
        for length in lengths:
            rng = source.rng_for(source.HELD_OUT, seed * 1_000_003 + length)
            right = 0
            for first in range(0, videos, batch):
                b = make_batch(rng, layout, processor, length, min(batch, videos - first), (kind,), None, noise)
                hidden, _ = forward(model, b, layout.video_id, layout=layout)
                rows = torch.arange(b.ids.shape[0])
                guess = model.lm_head(hidden[rows, b.answer_at - 1]).argmax(-1)
                right += int((guess == b.ids[rows, b.answer_at]).sum())
            results[kind][str(length)] = right / videos
    return results
