"""The stage-1 training forward and loss (spec §6.3; golden README, `fw`).

Per item: t ~ U(0, 1) clamped to [1e-5, 1]; masking ratio p = max(sin(pi t / 2), 0.2); a prompt
of `prompt_len` frames is never masked; every other frame is masked with probability p (at
least one: the frame at `prompt_len` when the draw masked none). The input is

    x_t = mask * mask_emb[0] + (1 - mask) * cond_emb(x0)      (+ adapter(F) for fine-tuned tasks)

and the loss is the cross-entropy of `to_logit(diff_estimator(x_t, t, keep))` against x0,
averaged over the positions where `mask * keep` is 1.

The draws come from one `torch.Generator` in the official order (B uniforms for t; if no
prompt lengths are given, one uniform against `cfg_scale`, then one integer per item; then
the Bernoulli mask), so a generator seeded like the official `torch.manual_seed` redraws the
official masks exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metis_cli.nn.stage1 import MetisStage1

MIN_T = 1e-5  # t is clamped to [MIN_T, 1]
MIN_MASK_PROB = 0.2  # floor of the stage-1 masking ratio


@dataclass
class ForwardDraws:
    """The random part of one training forward."""

    t: Tensor  # (B,) float32 diffusion time in [1e-5, 1]
    prompt_len: Tensor  # (B,) int64 unmasked prompt frames
    mask: Tensor  # (B, L) float32, 1 = masked (never inside the prompt)

    @property
    def mask_prob(self) -> Tensor:
        """(B,) masking ratio max(sin(pi t / 2), 0.2)."""
        return mask_prob(self.t)


def mask_prob(t: Tensor) -> Tensor:
    """(B,) masking ratio of stage 1: max(sin(pi t / 2), 0.2)."""
    return torch.clamp(torch.sin(t * math.pi / 2), min=MIN_MASK_PROB)


def draw_forward(
    gen: torch.Generator,
    batch: int,
    length: int,
    prompt_len: Tensor | None = None,
    cfg_scale: float = 0.15,
) -> ForwardDraws:
    """Draw t, prompt lengths and the mask for a (batch, length) token batch (CPU generator).

    prompt_len: (B,) explicit prompt lengths (fine-tuning); None draws them: with probability
    1 - cfg_scale every item gets an integer in [min(L // 4, 5), int(0.4 L)), else all get 0.
    """
    t = torch.rand(batch, generator=gen).clamp(MIN_T, 1.0)
    if prompt_len is None:
        u = torch.rand(1, generator=gen).item()
        lo, hi = min(length // 4, 5), int(length * 0.4)
        if u > cfg_scale and hi > lo:
            prompt_len = torch.randint(lo, hi, (batch,), generator=gen)
        else:
            prompt_len = torch.zeros(batch, dtype=torch.long)
    prompt_len = prompt_len.to(torch.long).cpu()
    probs = mask_prob(t)[:, None].expand(batch, length).contiguous()
    mask = torch.bernoulli(probs, generator=gen)
    is_prompt = torch.arange(length)[None, :] < prompt_len[:, None]
    mask = mask * (~is_prompt)
    empty = torch.nonzero(mask.sum(dim=1) == 0).flatten()
    if len(empty):
        mask[empty, prompt_len[empty].clamp(max=length - 1)] = 1.0
    return ForwardDraws(t=t, prompt_len=prompt_len, mask=mask)


def select_draws(draws: ForwardDraws, rows: Tensor) -> ForwardDraws:
    """The draws of the batch rows `rows` (int64 indices)."""
    return ForwardDraws(t=draws.t[rows], prompt_len=draws.prompt_len[rows], mask=draws.mask[rows])


def embed_xt(model: MetisStage1, x0: Tensor, mask: Tensor) -> Tensor:
    """x_t (B, L, H): [MASK] embedding where mask is 1, `cond_emb(x0)` elsewhere."""
    m = mask[..., None].to(model.dtype)
    return m * model.mask_emb.weight[0] + (1 - m) * model.cond_emb(x0)


def training_logits(
    model: MetisStage1,
    x0: Tensor,
    keep: Tensor,
    draws: ForwardDraws,
    finetune_cond: Tensor | None = None,
    phone_ids: Tensor | None = None,
    phone_keep: Tensor | None = None,
) -> Tensor:
    """Logits (B, L, V) of the training forward on tokens x0 (B, L) with keep-mask (B, L).

    finetune_cond: (B, L, cond_dim) condition features, added through the adapter.
    phone_ids, phone_keep: (B, P) phone prefix of tts models (and its keep-mask).
    """
    fwd = TrainingForward(model)
    return fwd(x0, keep, draws.t, draws.mask, finetune_cond, phone_ids, phone_keep)


class TrainingForward(nn.Module):
    """The whole training forward as one module, x0 and the draws in, logits out.

    Every parameter use (the [MASK] and token embeddings included) happens inside `forward`,
    so the module can be wrapped in `DistributedDataParallel`.
    """

    def __init__(self, model: MetisStage1) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        x0: Tensor,
        keep: Tensor,
        t: Tensor,
        mask: Tensor,
        finetune_cond: Tensor | None = None,
        phone_ids: Tensor | None = None,
        phone_keep: Tensor | None = None,
    ) -> Tensor:
        dev = x0.device
        xt = embed_xt(self.model, x0, mask.to(dev))
        return self.model(
            xt, t.to(dev), keep, phone_ids=phone_ids, phone_keep=phone_keep, finetune_cond=finetune_cond
        )


def loss_mask(draws: ForwardDraws, keep: Tensor) -> Tensor:
    """(B, L) positions that count in the loss: masked and not padding."""
    return draws.mask.to(keep.device) * keep.to(torch.float32)


def masked_ce_sum(logits: Tensor, x0: Tensor, weight: Tensor) -> Tensor:
    """Summed cross-entropy (nats) over positions with weight 1; logits (B, L, V), x0/weight (B, L)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")  # (B, L)
    return (ce * weight).sum()


def masked_ce(logits: Tensor, x0: Tensor, weight: Tensor) -> Tensor:
    """Mean cross-entropy (nats) over positions with weight 1; logits (B, L, V), x0/weight (B, L)."""
    return masked_ce_sum(logits, x0, weight) / weight.sum().clamp(min=1.0)


def masked_hits(logits: Tensor, x0: Tensor, weight: Tensor) -> tuple[int, int]:
    """(correct argmax predictions, counted positions) over positions with weight 1."""
    w = weight > 0
    hit = (logits.argmax(-1) == x0) & w
    return int(hit.sum()), int(w.sum())
