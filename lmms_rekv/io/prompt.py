"""Chat templates: where a checkpoint keeps its template, and the prompt of one user turn
``[video, question]`` split at the video placeholder."""

from __future__ import annotations

import json
import os
from typing import Optional, Tuple


def load_chat_template(path: str, tokenizer) -> str:
    """The processor's chat template (``chat_template.jinja``/``.json``), else the tokenizer's."""
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja) as fh:
            return fh.read()
    for name in ("chat_template.json", "processor_config.json"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file) as fh:
                template = json.load(fh).get("chat_template")
            if template:
                return template
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise ValueError(f"no chat template found in {path} (chat_template.jinja, chat_template.json or tokenizer)")


def render_prompt(tokenizer, chat_template: str, question: str, system: Optional[str] = None,
                  template_kwargs: Optional[dict] = None) -> str:
    """A chat template rendered for one user turn ``[video, question]`` + generation prompt,
    after a system message ``system`` when given (else the template's default, if any);
    ``template_kwargs`` are the template's own variables (e.g. ``enable_thinking``)."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    if system is not None:
        conversation.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(conversation, chat_template=chat_template, add_generation_prompt=True, tokenize=False,
                                   **(template_kwargs or {}))


def split_prompt(tokenizer, chat_template: str, question: str, video_token: str = "<video>",
                 system: Optional[str] = None, template_kwargs: Optional[dict] = None) -> Tuple[str, str]:
    """(text before the video placeholder, text after it) of the rendered prompt."""
    text = render_prompt(tokenizer, chat_template, question, system, template_kwargs)
    if text.count(video_token) != 1:
        raise ValueError(f"chat template must place exactly one {video_token} in the prompt: {text!r}")
    before, after = text.split(video_token)
    return before, after
