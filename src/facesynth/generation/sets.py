"""Identity sets in a pipeline call: which row is each row's reference, and shared attention.

A set's members are denoised together, from the identity's seeds (each candidate of the set starts every member
from the same noise). With ``shared-attention`` each member's self-attention also attends to its reference's
keys and values (the training-free technique of StyleAligned and ConsiStory): the reference itself is denoised
as it would be alone, and a member's extra keys are weighted by ``strength`` (their attention logits shifted by
``log(strength)``), during the fraction ``steps`` of the steps. At strength 0 nothing is installed, so a member
is exactly the image its seed and prompt make alone.

Built for the UNet families (SD 1.x/2.x, SDXL); the DiT families' joint attention mixes text and image tokens
in one sequence, and is refused in one line (:func:`check_family`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ..errors import PlanError

SHARED_FAMILIES = ("sd", "sdxl")


def check_family(spec, family) -> None:
    """One line when the model's family cannot run the set mechanism."""
    if spec is None:
        return
    if spec.mechanism == "shared-attention" and family.name not in SHARED_FAMILIES:
        raise PlanError(f"identities.mechanism: shared-attention is built for the UNet families (SD 1.x/2.x and "
                        f"SDXL); {family.label} model's joint attention mixes text and image tokens: use another "
                        "model, or mechanism: reference")
    if spec.mechanism == "reference" and family.name not in SHARED_FAMILIES:
        raise PlanError(f"identities.mechanism: reference runs IP-Adapters, which facesynth loads for SD 1.x/2.x and "
                        f"SDXL; {family.label} model is neither")


def reference_rows(samples: Sequence[Any], n: int) -> list[int] | None:
    """Each image's reference image in a call laid out sample by sample, ``n`` candidates each (image ``g * n +
    c``): the same candidate of the set's reference member; None for a call with no set in it."""
    if not any(getattr(s, "identity", None) for s in samples):
        return None
    where: dict[str, int] = {}
    for g, s in enumerate(samples):
        where.setdefault(s.sample_id, g)  # a call padded with copies of its last sample: the first is the real one
    refs = []
    for g, sample in enumerate(samples):
        ref = where.get(sample.reference, g) if sample.identity else g
        if sample.identity and sample.reference not in where:
            raise RuntimeError(f"{sample.sample_id}: its set's reference {sample.reference} is not in the call")
        refs += [ref * n + c for c in range(n)]
    return refs


class SetState:
    """What the attention processors of one call read: each row's reference row, and whether sharing is on."""

    def __init__(self, refs: list[int], strength: float, steps: tuple[float, float], total: int):
        self.refs = torch.tensor(refs, dtype=torch.long)
        self.bias = math.log(strength) if strength > 0 else -math.inf
        self.start, self.end = round(steps[0] * total), max(1, round(steps[1] * total))
        self.active = self.start == 0 < self.end

    def step_done(self, i: int) -> None:
        """After step ``i`` (0-based): share during the next one if it falls in the range."""
        self.active = self.start <= i + 1 < self.end

    def cut(self, rows: torch.Tensor) -> None:
        """Pruning kept these rows (whole sets): each kept row's reference, renumbered."""
        position = {int(old): new for new, old in enumerate(rows.tolist())}
        self.refs = torch.tensor([position[int(self.refs[r])] for r in rows.tolist()], dtype=torch.long)

    def refs_for(self, batch: int) -> torch.Tensor | None:
        """The reference of each row of an attention batch: the call's rows, twice while guidance runs."""
        size = len(self.refs)
        if batch == size:
            return self.refs
        if batch == 2 * size:
            return torch.cat([self.refs, self.refs + size])
        return None


class SharedAttention:
    """Self-attention over a row's own keys and values and its reference's (see the module docstring)."""

    def __init__(self, state: SetState, plain):
        self.state, self.plain = state, plain

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        refs = self.state.refs_for(hidden_states.shape[0]) if self.state.active else None
        if (refs is None or encoder_hidden_states is not None or attention_mask is not None
                or attn.spatial_norm is not None):
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual, shape = hidden_states, hidden_states.shape
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.view(shape[0], shape[1], -1).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        refs = refs.to(key.device)
        length = key.shape[2]
        bias = torch.zeros(batch, 1, 1, 2 * length, device=query.device, dtype=query.dtype)
        own = refs == torch.arange(batch, device=refs.device)
        bias[:, :, :, length:] = self.state.bias
        bias[own, :, :, length:] = -math.inf  # a reference attends to itself alone, as it would without its set
        out = F.scaled_dot_product_attention(query, torch.cat([key, key[refs]], 2), torch.cat([value, value[refs]], 2),
                                             attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if len(shape) == 4:
            out = out.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def sharing(pipe, state: SetState | None) -> Iterator[None]:
    """Shared attention in the UNet's self-attention layers for one call (nothing without a state)."""
    if state is None:
        yield
        return
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)  # torch.compile keeps the module it wraps here
    before = dict(unet.attn_processors)
    unet.set_attn_processor({name: SharedAttention(state, proc) if name.endswith("attn1.processor") else proc
                             for name, proc in before.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(before)
