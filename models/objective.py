"""The ReFineVLA objective and selective freezing.

    L = L_action + λ · L_reasoning

each a token-level negative log-likelihood (mean over the batch's tokens of that kind), computed from
one forward pass whose per-token losses are split by `token_kinds` (see processing_spatialvla). With
λ = 0 this is exactly SpatialVLA's action-only loss.

Freezing is expressed as regular expressions over parameter names (openpi-style path filters), so what
is frozen is visible, loggable and testable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.spatialvla.processing_spatialvla import TOKEN_ACTION, TOKEN_REASONING


@dataclass
class LossParts:
    total: torch.Tensor
    action: torch.Tensor
    reasoning: torch.Tensor
    action_correct: int
    action_count: int
    reasoning_correct: int
    reasoning_count: int

    @property
    def action_accuracy(self) -> float:
        return self.action_correct / max(self.action_count, 1)

    @property
    def reasoning_accuracy(self) -> float:
        return self.reasoning_correct / max(self.reasoning_count, 1)


def labelled_window(labels: torch.Tensor) -> int:
    """How many trailing positions need logits: from the one before the batch's first label to the end."""
    labelled = (labels != -100).any(0).nonzero()
    return labels.shape[1] - int(labelled[0]) + 1 if len(labelled) else 1


def refinevla_loss(logits: torch.Tensor, labels: torch.Tensor, token_kinds: torch.Tensor, reasoning_weight: float) -> LossParts:
    """`logits` may cover only the last positions of the sequence (see `labelled_window`)."""
    k = logits.shape[1]
    labels, token_kinds = labels[:, -k:], token_kinds[:, -k:]
    logits = logits[:, :-1].float()  # position t predicts token t+1
    targets, kinds = labels[:, 1:], token_kinds[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    correct = logits.argmax(-1) == targets

    def part(kind: int) -> tuple[torch.Tensor, int, int]:
        mask = (kinds == kind) & (targets != -100)
        n = int(mask.sum())
        loss = nll[mask].mean() if n else nll.new_zeros(())
        return loss, int(correct[mask].sum()), n

    action, a_ok, a_n = part(TOKEN_ACTION)
    reasoning, r_ok, r_n = part(TOKEN_REASONING)
    return LossParts(action + reasoning_weight * reasoning, action, reasoning, a_ok, a_n, r_ok, r_n)


def action_l1(logits: torch.Tensor, labels: torch.Tensor, token_kinds: torch.Tensor, begin: int, action_tokenizer) -> float:
    """Mean L1, in normalised action units, between the greedy (argmax) action tokens and the labels' actions.

    Teacher-forced like the accuracies: position t's argmax predicts token t+1; each id is clipped into its
    slot's range by the grid decoder. Rows whose action tokens are cut off by the logits window are skipped."""
    k = logits.shape[1]
    targets, kinds = labels[:, -k:][:, 1:], token_kinds[:, -k:][:, 1:]
    is_action = (kinds == TOKEN_ACTION) & (targets >= begin)
    pred = logits[:, :-1].argmax(-1)
    errors = []
    for row in range(len(targets)):
        t, p = targets[row][is_action[row]], pred[row][is_action[row]]
        if len(t) == 0 or len(t) % 3:
            continue
        a = action_tokenizer.decode((t - begin).view(-1, 3).cpu().numpy())
        b = action_tokenizer.decode((p - begin).clamp(min=0).view(-1, 3).cpu().numpy())
        errors.append(abs(a - b).mean())
    return float(sum(errors) / len(errors)) if errors else float("nan")


def freeze_filters(freeze_vision: bool, freeze_embeddings: bool, freeze_first_n_layers: int) -> list[str]:
    """Regexes over parameter names of `SpatialVLAForConditionalGeneration` that select frozen weights.

    ZoeDepth is always frozen (SpatialVLA never trains it); `freeze_vision` covers SigLIP and the Ego3D
    position MLP (the whole image path before the projector)."""
    filters = [r"^vision_zoe_model\."]
    if freeze_vision:
        filters += [r"^vision_tower\.", r"^position_embedding_3d\."]
    if freeze_embeddings:  # the input table; `spatial_embed_tokens` stays trainable as in SpatialVLA
        filters.append(r"^language_model\.model\.embed_tokens\.")
    if freeze_first_n_layers > 0:
        layers = "|".join(str(i) for i in range(freeze_first_n_layers))
        filters.append(rf"^language_model\.model\.layers\.({layers})\.")
    return filters


def apply_freezing(model: torch.nn.Module, filters: list[str]) -> dict[str, int]:
    """Set requires_grad=False on matching parameters; return parameter counts."""
    rx = [re.compile(f) for f in filters]
    frozen = trainable = 0
    for name, p in model.named_parameters():
        p.requires_grad = not any(r.search(name) for r in rx)
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return {"params_total": frozen + trainable, "params_trainable": trainable, "params_frozen": frozen}
