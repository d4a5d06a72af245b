"""The backbone seam: what the ReKV engine needs from a model family, and the routing of a
text tower's attention to a ReKV handler.

The engine (session, encoder, QA, store, retrieval, tiers, persistence) never names a
family; it talks to a :class:`Backbone`. Each family is one file in this folder that
subclasses it (``llava_onevision.py``, ...), registered by ``model_type`` in ``__init__``.

Positions are ``(P, T)`` long tensors: ``P = 1`` for 1-D RoPE, ``P = 3`` (time, height,
width) for M-RoPE. ``Backbone.position_ids`` turns them into the ``position_ids`` the text
model takes.

Routing (:class:`Routing`): inside ``with backbone.routed(handler):`` every text-tower
attention call goes to ``handler.attend(layer, q, k, v, q_pre, k_pre, scaling)`` with

* ``q``/``k`` the post-RoPE tensors the model computed, ``(B, Hq, T, D)`` / ``(B, Hkv, T, D)``;
  ``v`` ``(B, Hkv, T, D)``;
* ``q_pre``/``k_pre`` the same before RoPE, captured exactly by forward hooks on the family's
  pre-RoPE modules, ``(B, T, Hq, D)`` / ``(B, T, Hkv, D)``;

and returns the attention output ``(B, Hq, T, D)``. The routing state (which handler, the
captured tensors) belongs to the calling context (a ``contextvars.ContextVar``), never to
the model or the backbone: sessions on one loaded model may run in different threads.
The attention function is registered with transformers' ``AttentionInterface`` under a name
unique to the routing and selected for the text tower only; hooks and the implementation
are installed while at least one routed block is open (in any thread) and removed when the
last one closes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Protocol, Sequence, Tuple

import torch

from lmms_rekv.config import POSITION_STRATEGIES as _CONFIG_POSITION_STRATEGIES
from lmms_rekv.layout import StreamLayout, checked_timing

logger = logging.getLogger(__name__)


class AttentionHandler(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               q_pre: torch.Tensor, k_pre: torch.Tensor, scaling: float) -> torch.Tensor: ...


class _Route:
    """One open ``routed`` block: its handler and the pre-RoPE tensors captured for it."""

    __slots__ = ("routing", "handler", "q_pre", "k_pre")

    def __init__(self, routing: "Routing", handler: AttentionHandler, layers: int) -> None:
        self.routing, self.handler = routing, handler
        self.q_pre: List[Optional[torch.Tensor]] = [None] * layers
        self.k_pre: List[Optional[torch.Tensor]] = [None] * layers


_ROUTES: contextvars.ContextVar[Tuple[_Route, ...]] = contextvars.ContextVar("rekv_routes", default=())


class Routing:
    """Reversible routing of one text tower's attention to ReKV handlers (see module doc).

    Args:
        text_model: the decoder stack (has ``set_attn_implementation`` and ``config``).
        capture: per KV layer, the ``(query module, key module)`` whose outputs are the
            pre-RoPE projections.
    """

    def __init__(self, text_model: Any, capture: Sequence[Tuple[torch.nn.Module, torch.nn.Module]]) -> None:
        self.text_model = text_model
        self.capture = list(capture)
        self.name = f"rekv_{id(self):x}"
        self._hooks: list = []
        self._previous_impl: Optional[str] = None
        self._users = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether a routed block is open in this context."""
        return self._current() is not None

    @property
    def hook_count(self) -> int:
        return len(self._hooks)

    @contextlib.contextmanager
    def routed(self, handler: AttentionHandler) -> Iterator["Routing"]:
        """Route this context's text-tower attention to ``handler`` for the block."""
        with self._lock:
            if self._users == 0:
                self._install()
            self._users += 1
        token = _ROUTES.set(_ROUTES.get() + (_Route(self, handler, len(self.capture)),))
        try:
            yield self
        finally:
            _ROUTES.reset(token)
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._uninstall()

    def _current(self) -> Optional[_Route]:
        for route in reversed(_ROUTES.get()):
            if route.routing is self:
                return route
        return None

    # -- installation -------------------------------------------------------------------
    def _install(self) -> None:
        from transformers import AttentionInterface

        AttentionInterface.register(self.name, self._attention)
        try:
            for idx, (q_mod, k_mod) in enumerate(self.capture):
                self._hooks.append(q_mod.register_forward_hook(self._capture(idx, "q_pre")))
                self._hooks.append(k_mod.register_forward_hook(self._capture(idx, "k_pre")))
            self._previous_impl = self.text_model.config._attn_implementation
            self.text_model.set_attn_implementation(self.name)
        except BaseException:
            self._uninstall()
            raise
        logger.debug("installed %s on %d layers", self.name, len(self.capture))

    def _uninstall(self) -> None:
        from transformers import AttentionInterface

        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self._previous_impl is not None:
            self.text_model.set_attn_implementation(self._previous_impl)
            self._previous_impl = None
        AttentionInterface._global_mapping.pop(self.name, None)

    def _capture(self, idx: int, slot: str):
        def hook(module, inputs, output):
            route = self._current()
            if route is not None:
                getattr(route, slot)[idx] = output

        return hook

    # -- the registered attention function -----------------------------------------------
    def _attention(self, module, query, key, value, attention_mask, scaling=None, **kwargs):
        route = self._current()
        layer = getattr(module, "layer_idx", None)
        if route is None or layer is None:
            raise RuntimeError("ReKV attention called outside a routed forward")
        q_pre, k_pre = route.q_pre[layer], route.k_pre[layer]
        route.q_pre[layer] = route.k_pre[layer] = None
        if q_pre is None or k_pre is None:
            raise RuntimeError("ReKV attention called outside a routed forward")
        batch, _, tokens, head_dim = query.shape
        q_pre = q_pre.view(batch, tokens, -1, head_dim)
        k_pre = k_pre.view(batch, tokens, -1, head_dim)
        scale = module.scaling if scaling is None else scaling
        out = route.handler.attend(layer, query, key, value, q_pre, k_pre, scale)
        return out.transpose(1, 2).contiguous(), None


class Rope:
    """RoPE at arbitrary positions through the model's own ``rotary_emb`` and the family's
    module-level ``apply_rotary_pos_emb`` (sectioned, interleaved or partial rotary is
    theirs, not ours)."""

    def __init__(self, text_model: Any, apply_rotary_pos_emb) -> None:
        self.rotary = text_model.rotary_emb
        self._apply = apply_rotary_pos_emb

    def tables(self, positions: torch.Tensor, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``(T, R)`` in ``like``'s dtype for ``(P, T)`` positions."""
        positions = positions.to(like.device)
        ids = positions if positions.shape[0] == 1 else positions[:, None]
        cos, sin = self.rotary(like, ids)
        return cos[0], sin[0]

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE of ``x`` ``(H, T, D)`` with tables ``(T, R)``."""
        return self._apply(x, x[:0], cos, sin, unsqueeze_dim=0)[0]


class ChunkInputs(NamedTuple):
    """What the text model takes for a chunk of whole blocks (``Backbone.chunk_inputs``)."""

    embeds: torch.Tensor  # (1, L, hidden) input embeddings of the chunk's L tokens
    lm_kwargs: Dict[str, Any]  # extra text-model arguments for this chunk (e.g. deepstack rows)
    slots: Optional[torch.Tensor] = None  # (L,) each token's slot among blocks * block_tokens; None: one to one


#: How a question's retrieved blocks are positioned (``ReKVConfig.position_strategy``):
#: ``layout`` re-runs the family's position rule over [sinks, retrieved blocks in time order,
#: text]; ``original`` keeps each block's stream positions (gaps included); ``consecutive_t``
#: numbers the blocks' time consecutively (height/width kept); ``1d`` numbers every token
#: consecutively on all axes (ReKV on LLaVA-OV; for the M-RoPE study only).
POSITION_STRATEGIES = _CONFIG_POSITION_STRATEGIES  # the configuration's list (one list)


class ChatPrompt:
    """A family's chat template split at the video, as token ids: the tokens before it (the
    sinks, computed once), the tokens after it for a question, and where the question's own
    text sits among them. ``split(question)`` is the family's ``split_prompt``."""

    def __init__(self, tokenize: Callable[[str], List[int]], tokenizer: Any, split: Callable[[str], Tuple[str, str]]) -> None:
        self.tokenize, self.tokenizer, self.split = tokenize, tokenizer, split
        self._prefix: Optional[List[int]] = None

    def prefix_ids(self) -> List[int]:
        """Tokens before the video (the sinks); independent of the question."""
        if self._prefix is None:
            self._prefix = self.tokenize(self.split("?")[0])
        return self._prefix

    def suffix_ids(self, question: str) -> List[int]:
        """Tokens after the video: the question and the rest of the template."""
        before, after = self.split(question)
        if self.tokenize(before) != self.prefix_ids():
            raise ValueError("the chat template's text before the video depends on the question")
        return self.tokenize(after)

    def question_span(self, question: str) -> Tuple[int, int]:
        """``(start, end)``: the suffix ids that overlap the question's own text (the rest
        is chat template)."""
        after = self.split(question)[1]
        at = after.find(question)
        if at < 0:
            raise ValueError("the chat template does not render the question verbatim")
        offsets = self.tokenizer(after, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        inside = [i for i, (a, b) in enumerate(offsets) if a < at + len(question) and b > at]
        return inside[0], inside[-1] + 1


class Backbone:
    """What the engine needs from one model family (one subclass per file in ``patches/``).

    The defaults are a plain decoder with 1-D RoPE whose every layer carries KV and whose
    pre-RoPE projections are ``q_proj``/``k_proj``; families override what differs.
    Built from the loaded pieces: ``model`` (the transformers ``...ForConditionalGeneration``),
    ``tokenizer``, ``chat_template`` and ``processor`` (frames -> pixels); unchanged after that:
    what differs between streams is a :class:`StreamLayout` the per-stream methods take."""

    model_type: str = ""
    frames_per_block: int = 1
    position_rows: int = 1  # P: 1 for 1-D RoPE, 3 for M-RoPE
    strategies: Tuple[str, ...] = ("layout", "1d")  # position strategies this family supports
    #: prompt options the family's chat template takes (``system_prompt``, ``template_kwargs``)
    prompt_options: Tuple[str, ...] = ()

    def __init__(self, model: Any, tokenizer: Any, chat_template: str, processor: Any,
                 frame_size: Optional[Tuple[int, int]] = None, **prompt_options: Any) -> None:
        if frame_size is not None:  # families with a settable resolution take it before calling this
            raise ValueError(f"frame_size is fixed by the {self.model_type} checkpoint; leave it unset")
        for name, value in prompt_options.items():
            if name not in self.prompt_options:
                raise ValueError(f"{name} is not supported for {self.model_type} (its prompt is fixed)")
        self.model, self.tokenizer, self.chat_template, self.processor = model, tokenizer, chat_template, processor
        self.text_model = model.model.language_model
        self.routing = Routing(self.text_model, [self.pre_rope_modules(i) for i in self.kv_layers()])
        self.rope = Rope(self.text_model, self.rotary_function())
        self.prompt = ChatPrompt(self.tokenize, tokenizer, self.split_prompt)

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, dtype: torch.dtype, **model_kwargs) -> "Backbone":
        """Model, tokenizer, chat template and frame processor from a checkpoint folder."""
        raise NotImplementedError

    # -- structure ----------------------------------------------------------------------
    @property
    def block_tokens(self) -> int:
        """Tokens per block of the default layout (a stream's own: ``StreamLayout.block_tokens``)."""
        return self.default_layout.block_tokens

    def kv_layers(self) -> List[int]:
        """Decoder layers that carry per-token KV (all of them here)."""
        return list(range(len(self.text_model.layers)))

    def pre_rope_modules(self, layer: int) -> Tuple[torch.nn.Module, torch.nn.Module]:
        """Modules whose outputs are layer ``layer``'s pre-RoPE queries and keys."""
        attn = self.text_model.layers[layer].self_attn
        return attn.q_proj, attn.k_proj

    def kv_shape(self) -> Tuple[int, int, int]:
        """``(layers, kv_heads, head_dim)`` of the stored KV."""
        text = self.model.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return len(self.kv_layers()), text.num_key_value_heads, head_dim

    def routed(self, handler: AttentionHandler):
        """``with backbone.routed(handler):`` -- see :class:`Routing`."""
        return self.routing.routed(handler)

    def rotary_function(self):
        """The family's module-level ``apply_rotary_pos_emb`` (RoPE is never re-implemented
        here: sectioned, interleaved and partial rotary are the family's)."""
        raise NotImplementedError

    # -- a stream's layout ----------------------------------------------------------------
    #: whether a kept token stands at its own slot's position (M-RoPE); stores then keep the slots
    positions_by_slot: bool = False
    #: whether the family sizes frames from the video (one size per stream; see ``fit``)
    sizes_per_stream: bool = False
    #: whether a stream's frame size depends on its frame count (Qwen3-VL's clip budget)
    sizes_by_clip: bool = False
    #: ``(height, width)`` frames are resized to by default (a stream's own: ``StreamLayout.frame_size``)
    frame_size: Optional[Tuple[int, int]] = None

    def fixed_block_tokens(self) -> int:
        """Tokens per block of a family with one resolution."""
        raise NotImplementedError

    def layout(self, frame_size: Optional[Tuple[int, int]] = None, fps: Optional[float] = None,
               frame_times: Optional[Sequence[float]] = None) -> StreamLayout:
        """The layout of a new stream sampled at ``fps`` (frames taken at ``frame_times`` seconds),
        of frames resized to ``frame_size`` (None: the family's rule); ``ValueError`` if refused."""
        if frame_size is not None:
            raise ValueError(f"frame_size is fixed by the {self.model_type} checkpoint; leave it unset")
        fps, times = checked_timing(fps, frame_times)
        return StreamLayout(block_tokens=self.fixed_block_tokens(), fps=fps, frame_times=times)

    @functools.cached_property
    def default_layout(self) -> StreamLayout:
        """The layout of a stream that gives no size, rate or times (made once)."""
        return self.layout()

    def fit(self, layout: StreamLayout, height: int, width: int, frames: Optional[int] = None) -> StreamLayout:
        """``layout`` once the stream's first frame (``height x width``) is seen (``frames``: how
        many the stream has, when known). Families with one resolution: ``layout``."""
        return layout

    def check_stream(self, layout: StreamLayout, strategy: str) -> None:
        """Raise ``ValueError`` if this family cannot position a stream of ``layout`` with ``strategy``."""
        self.check_strategy(strategy)

    # -- vision ---------------------------------------------------------------------------
    def preprocess(self, frames: torch.Tensor, layout: StreamLayout) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` frames -> per-frame model inputs ``(N, ...)`` (what
        ``block_features`` takes; concatenated along dim 0 as frames wait for a chunk)."""
        return self.processor(frames, dtype=self.model.dtype, device=self.model.device)

    def block_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``preprocess`` output of ``N`` frames (a multiple of ``frames_per_block``) ->
        ``(1, N / frames_per_block * block_tokens, hidden)`` LM input embeddings."""
        raise NotImplementedError

    def chunk_inputs(self, pixels: torch.Tensor, first_block: int, layout: StreamLayout) -> ChunkInputs:
        """The text model's inputs for stream blocks ``first_block..`` (``preprocess``
        output of whole blocks; block ``layout.padded``, if any, is an incomplete block padded
        by repeating its last frame). Here: ``block_features``, every token in its own slot."""
        return ChunkInputs(self.block_features(pixels), {})

    def block_rows(self, blocks: torch.Tensor, device: torch.device, layout: StreamLayout,
                   kept: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Which gathered stored slots of ``blocks`` hold tokens (``(n,)``; None: all); ``kept``: the
        ``(K, S)`` written slots the stored ones stand for (token reduction; None: every slot)."""
        return None

    # -- prompt ---------------------------------------------------------------------------
    def tokenize(self, text: str) -> List[int]:
        """Token ids of ``text`` without special tokens added."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """``(1, T, hidden)`` token embeddings."""
        ids_t = torch.tensor([list(ids)], dtype=torch.long, device=self.model.device)
        return self.text_model.embed_tokens(ids_t)

    def split_prompt(self, question: str) -> Tuple[str, str]:
        """(text before the video, text after it) of the chat template rendered for one
        user turn ``[video, question]`` plus the generation prompt."""
        raise NotImplementedError

    def suffix_embeds(self, suffix: Sequence[int]) -> torch.Tensor:
        """``(1, T, hidden)`` embeddings of what follows the video blocks in the prompt
        (``T`` may exceed ``len(suffix)``: tokens the family places after the video)."""
        return self.embed(suffix)

    def suffix_offset(self) -> int:
        """Tokens ``suffix_embeds`` places before the suffix ids."""
        return 0

    def vanilla_input_ids(self, question: str, frames: int, layout: Optional[StreamLayout] = None) -> torch.Tensor:
        """``(1, T)`` prompt ids as the vanilla model's processor builds them for ``frames``
        frames of a stream of ``layout`` (None: the default layout)."""
        raise NotImplementedError

    # -- positions --------------------------------------------------------------------------
    def position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """``(P, T)`` positions -> the text model's ``position_ids`` (``(1, T)`` or ``(3, 1, T)``)."""
        return positions if positions.shape[0] == 1 else positions[:, None]

    def text_positions(self, start: int, count: int, device: torch.device) -> torch.Tensor:
        """``(P, count)`` positions of text tokens from counter ``start``."""
        return torch.arange(start, start + count, device=device).expand(self.position_rows, -1)

    def check_strategy(self, strategy: str) -> None:
        """Raise ``ValueError`` if this family cannot position retrieved blocks with ``strategy``
        (one of ``POSITION_STRATEGIES``: the configuration checks that)."""
        if strategy not in self.strategies:
            raise ValueError(f"position_strategy={strategy!r} needs an M-RoPE family; {self.model_type} supports {self.strategies}")

    def encode_positions(self, sinks: int, window_len: int, chunk: int, stream_tokens: int, window: Optional[int],
                         device: torch.device, layout: StreamLayout) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions while encoding ``chunk`` tokens after ``window_len`` window tokens
        (``stream_tokens`` so far): ``(window keys (P, window_len), chunk (P, chunk), chunk
        queries as seen from the sinks (P, chunk))``. 1-D: window and chunk at their true
        distances after the sinks; stream token ``t`` sees a sink as if it sat just before the
        oldest window slot (``S + min(t, W - 1)``): positions stay below ``S + W + chunk``."""
        window_keys = self.text_positions(sinks, window_len, device)
        chunk_pos = self.text_positions(sinks + window_len, chunk, device)
        t = torch.arange(stream_tokens, stream_tokens + chunk, device=device)
        seen = sinks + (t if window is None else t.clamp(max=window - 1))
        return window_keys, chunk_pos, seen.expand(self.position_rows, -1)

    def positions_use_indices(self, strategy: str) -> bool:
        """Whether ``context_positions`` under ``strategy`` depend on which blocks were
        retrieved (not only on how many)."""
        return strategy == "original"

    def context_positions(self, sinks: int, blocks: torch.Tensor, text: int, device: torch.device, layout: StreamLayout,
                          strategy: str = "layout", stored_tokens: Optional[int] = None,
                          kept: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(P, sinks + K * block_tokens + text)`` positions of a question's context
        ``[sinks, the K retrieved blocks (indices ``blocks``, time order), text after the
        video]`` under ``strategy`` (the last ``text`` rows may run past the prompt: decoding).
        1-D: consecutive (ReKV). Token reduction: a block holds ``stored_tokens``, standing for
        the written slots ``kept`` ``(K, S)`` (``positions_by_slot``: each where its slot stood)."""
        per_block = layout.block_tokens if stored_tokens is None else stored_tokens
        return self.text_positions(0, sinks + len(blocks) * per_block + text, device)
