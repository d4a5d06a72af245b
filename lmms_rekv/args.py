"""One parser for every setting given as text: ``ReKVConfig`` fields, the lmms-eval model's own
``--model_args`` and the ``rekv`` flags (in the spirit of vLLM's ``EngineArgs``).

A dataclass's fields say how their text is read: the type hint (int, float, bool, str, an int
pair, ``Optional[...]``) and, in the field's metadata, ``none`` -- the words that mean None for
that field (default ``none``/``null``; e.g. ``max_frames`` also takes ``all``, ``doc_timeout``
also ``0``). ``build`` refuses unknown names with the closest ones. Torch-free: the
configuration and the commands import it before anything heavy.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Dict, Iterable, Optional, Type, TypeVar

T = TypeVar("T")

NONE_WORDS = ("none", "null")
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")
#: why a device map (e.g. ``balanced``) is refused
ONE_DEVICE = "one device per process (auto, cpu, cuda or cuda:N); sharding a model over devices is not implemented"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the choices closest to a mistyped ``name`` (a prefix of one, or
    close in spelling; dashes and underscores alike), else ``""``."""
    key = name.strip().lstrip("-").replace("-", "_").lower()
    plain = {c.lstrip("-").replace("-", "_").lower(): c for c in choices}
    squash = key.replace("_", "")
    found = [plain[p] for p in plain if squash and p.replace("_", "").startswith(squash)]
    found += [plain[p] for p in difflib.get_close_matches(key, list(plain), n=2, cutoff=0.6) if plain[p] not in found]
    return f" (did you mean {' or '.join(found[:3])}?)" if found else ""


def parse(name: str, value: Any, hint: Any, none_words: Iterable[str] = NONE_WORDS) -> Any:
    """``value`` read as the type ``hint`` (int, float, bool, str, an int pair, possibly
    Optional); a value that is not text is returned as it is (lmms-eval's own parser turns
    "-1" into -1.0: an int field keeps it an int). Raises ValueError naming ``name``."""
    args = typing.get_args(hint)
    optional = type(None) in args
    target = next((a for a in args if a is not type(None)), hint) if args else hint
    if not isinstance(value, str):
        if target is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return float(value) if target is float and isinstance(value, int) and not isinstance(value, bool) else value
    word = value.strip().lower()
    if optional and word in none_words:
        return None
    if target is bool:
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(f"{name}: cannot read {value!r} as true/false")
        return word in TRUE_WORDS
    if typing.get_origin(target) is tuple:  # "448x448" or "448,448"
        try:
            return tuple(int(p) for p in word.replace(",", "x").split("x"))
        except ValueError as exc:
            raise ValueError(f"{name}: cannot read {value!r} as HEIGHTxWIDTH") from exc
    try:
        return target(value) if target in (int, float) else value
    except ValueError as exc:
        raise ValueError(f"{name}: cannot read {value!r} as {target.__name__}") from exc


def hints(cls: type) -> Dict[str, Any]:
    """The fields of dataclass ``cls`` and their type hints (deprecated ``InitVar`` spellings are
    not settable as text)."""
    found = typing.get_type_hints(cls)
    return {f.name: found[f.name] for f in dataclasses.fields(cls)}


def build(cls: Type[T], values: Dict[str, Any], kind: Optional[str] = None) -> T:
    """``cls(**values)`` with each text value read by its field (``parse``); an unknown name
    raises ValueError naming the closest fields (``kind``: what to call them, default the
    class name)."""
    fields = hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {kind or cls.__name__} field" + ("s " if len(unknown) > 1 else " ")
                         + ", ".join(f"{name!r}{did_you_mean(name, fields)}" for name in unknown))
    words = {f.name: f.metadata.get("none", NONE_WORDS) for f in dataclasses.fields(cls)}
    return cls(**{name: parse(name, value, fields[name], words.get(name, NONE_WORDS)) for name, value in values.items()})


def is_device(text: str) -> bool:
    """Whether ``text`` names one device: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (the one
    rule every entry point checks spellings with; whether this machine has the device is
    ``commands.flags.check_device``'s question, where it is resolved ``pick_device``'s)."""
    base, _, index = str(text).strip().partition(":")
    return base in ("auto", "cpu", "mps") and not index or base == "cuda" and (not index or index.isdigit())
