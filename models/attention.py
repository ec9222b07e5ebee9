"""Where the policy looks: attention of action tokens over image patches, fused over heads and layers.

Following the paper (Sec. 3, Eq. 1-2; its exact fusion formula was lost in extraction), for the query
positions that produce the action tokens we take softmax attention over the 256 image-patch keys, for
every layer l and head h: A[l, h, a, n]. Each (layer, head) gets a score, the attention mass it puts on
the image averaged over the action queries; the `top_k` highest-scoring (layer, head) maps are averaged
(over their action queries too) into one map over the patch grid, normalised to sum 1.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


@torch.no_grad()
def action_image_attention(model, batch: dict, query_positions: list[int], image_positions: list[int]) -> np.ndarray:
    """(layers, heads, queries, image tokens) attention weights for sample 0 of `batch` (eager attention)."""
    previous = model.config.text_config._attn_implementation
    model.language_model.set_attn_implementation("eager")  # only eager returns the weights
    try:
        out = model(input_ids=batch["input_ids"][:1], pixel_values=batch["pixel_values"][:1], attention_mask=batch["attention_mask"][:1],
                    output_attentions=True, logits_to_keep=1)
    finally:
        model.language_model.set_attn_implementation(previous)
    q, k = torch.tensor(query_positions), torch.tensor(image_positions)
    return torch.stack([a[0][:, q][:, :, k] for a in out.attentions]).float().cpu().numpy()


def fuse_topk(att: np.ndarray, top_k: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(L, H, A, N) → fused (N,) map summing to 1, and the chosen (layer, head) pairs, best first."""
    L, H = att.shape[:2]
    score = att.sum(-1).mean(-1)  # (L, H): image mass per head, averaged over action queries
    order = np.argsort(score.reshape(-1))[::-1][: max(1, min(top_k, L * H))]
    chosen = [(int(i // H), int(i % H)) for i in order]
    fused = np.mean([att[layer, head].mean(0) for layer, head in chosen], axis=0)
    return fused / max(float(fused.sum()), 1e-12), chosen


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Upsample a (g, g) map to the image (bilinear) and blend it over the image with the 'jet' colormap."""
    import matplotlib

    h, w = image.shape[:2]
    hm = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    hm = (hm - hm.min()) / max(float(hm.max() - hm.min()), 1e-12)
    colored = matplotlib.colormaps["jet"](hm)[..., :3] * 255
    return (alpha * colored + (1 - alpha) * image).clip(0, 255).astype(np.uint8)
