"""Prompts: A1111 weight syntax converted to compel's, and long prompts encoded in chunks.

Recipes use the A1111 syntax people know: ``(text:1.2)`` weights text by 1.2,
``(text)`` by 1.1 and ``[text]`` by 1/1.1; ``\\(`` is a literal parenthesis.
compel writes weights as ``(text)1.2`` and encodes prompts longer than CLIP's
77 tokens as several 77-token chunks, for the prompt and the negative prompt alike.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

_WEIGHT = re.compile(r":\s*([0-9]*\.?[0-9]+)\s*$")


def a1111_to_compel(text: str) -> str:
    """Convert A1111 prompt weights to compel syntax."""
    out, _ = _convert(text, 0, closer=None)
    return out


def _convert(text: str, i: int, closer: str | None) -> tuple[str, int]:
    parts: list[str] = []
    plain: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            plain.append(text[i: i + 2])
            i += 2
            continue
        if ch in "([":
            inner, j = _convert(text, i + 1, ")" if ch == "(" else "]")
            if j is None:  # unbalanced: keep the bracket as a literal
                plain.append("\\" + ch)
                i += 1
                continue
            parts.append("".join(plain))
            plain = []
            parts.append(_group(inner, ch))
            i = j
            continue
        if closer and ch == closer:
            parts.append("".join(plain))
            return "".join(parts), i + 1
        if ch in ")]":
            plain.append("\\" + ch)
        else:
            plain.append(ch)
        i += 1
    parts.append("".join(plain))
    if closer:
        return "".join(parts), None  # type: ignore[return-value]
    return "".join(parts), i


def _group(inner: str, bracket: str) -> str:
    weight = 1.1 if bracket == "(" else 1 / 1.1
    if bracket == "(":
        m = _WEIGHT.search(inner)
        if m:
            weight = float(m.group(1))
            inner = inner[: m.start()]
    inner = inner.strip()
    if not inner:
        return ""
    return f"({inner}){weight:.4g}"


@dataclass
class Conditioning:
    """Prompt and negative embeddings of one sample, padded to the same length."""

    embeds: torch.Tensor
    negative: torch.Tensor
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])


_SYNTAX = re.compile(r"[()\[\]]|[+-](?=[\s,]|$)|\.(and|blend|swap)\(|withLora\(")


@lru_cache(maxsize=4096)
def parse_prompt(text: str):
    """compel's parse, cached (the negative prompt is shared by every sample), and skipped for plain text.

    compel's pyparsing grammar costs ~80 ms a prompt on a CPU core; text without weight
    syntax parses to one fragment of weight 1, which is built here directly.
    """
    from compel import Compel
    from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment

    if not _SYNTAX.search(text):
        return Conjunction([FlattenedPrompt([Fragment(text, 1.0)])])
    return Compel.parse_prompt_string(text)


_COMPEL_ONLY = re.compile(r"[\w)][+-]+(?=[\s,]|$)|\.(and|blend|swap)\(|withLora\(")


def has_weights(text: str) -> bool:
    """Whether ``text`` uses A1111 or compel weight syntax: ``(word:1.3)``, ``[word]``, ``word++``, ``.and()``."""
    return a1111_to_compel(text) != text or bool(_COMPEL_ONLY.search(text))


class PromptEncoder:
    """Encodes one sample's prompt pair at a time, so its embeddings never depend on its batch; the last
    ``cache_size`` pairs stay cached (enough for a batch and its retries, small enough that memory stays
    flat: an SD 1.5 pair is about 0.2 MB)."""

    def __init__(self, encode: Callable[[str, str], Conditioning], cache_size: int = 256):
        self._encode = encode
        self._cache: OrderedDict[tuple[str, str], Conditioning] = OrderedDict()
        self.cache_size = cache_size

    @torch.inference_mode()
    def encode(self, prompt: str, negative: str) -> Conditioning:
        key = (prompt, negative)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        result = self._encode(prompt, negative)
        self._cache[key] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result


def compel_encoder(compel) -> PromptEncoder:
    """Weighted prompts (A1111 syntax, converted) through the family's compel (``CompelForSD(pipe)``, ...)."""
    from compel import Compel

    for inner in vars(compel).values():
        if isinstance(inner, Compel):
            inner.parse_prompt_string = parse_prompt

    def encode(prompt: str, negative: str) -> Conditioning:
        cond = compel([a1111_to_compel(prompt)], negative_prompt=[a1111_to_compel(negative)])
        return Conditioning(cond.embeds, cond.negative_embeds, cond.pooled_embeds, cond.negative_pooled_embeds)

    return PromptEncoder(encode)
