"""Where the policy looks: attention of action (or reasoning) tokens over image patches, fused over heads
and layers, and how much of it falls on the task-relevant objects.

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
def attention_rows(model, batch: dict, query_positions: list[int], key_positions: list[int]) -> np.ndarray:
    """(layers, heads, queries, keys) softmax attention of sample 0 of `batch`, from chosen query rows to chosen
    key columns. Memory-safe on the 4 B model: a hook on every attention module keeps only those rows and
    columns of its layer's weights as the forward pass goes, so no layer's full (heads, S, S) map outlives
    its layer. Eager attention for this pass only (SDPA/FlashAttention do not return weights)."""
    from models.spatialvla.processing_spatialvla import SpatialVLAProcessor

    q, k = torch.tensor(query_positions), torch.tensor(key_positions)
    rows: list[torch.Tensor] = []

    def keep(module, args, output):
        rows.append(output[1][0][:, q][:, :, k].float().cpu())

    hooks = [layer.self_attn.register_forward_hook(keep) for layer in model.language_model.model.layers]
    previous = model.config.text_config._attn_implementation
    model.language_model.set_attn_implementation("eager")
    try:
        model(**{k: v[:1] for k, v in SpatialVLAProcessor.model_inputs(batch).items()},
              logits_to_keep=1)
    finally:
        model.language_model.set_attn_implementation(previous)
        for h in hooks:
            h.remove()
    return torch.stack(rows).numpy()


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


def box_coverage(boxes: list[list[float]], height: int, width: int, grid: int) -> np.ndarray:
    """(grid, grid) share of each image patch covered by the union of pixel boxes [x0, y0, x1, y1] (a pixel
    belongs to a box when its centre does)."""
    mask = np.zeros((height, width), np.float32)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, int(np.ceil(y0 - 0.5))) : int(np.floor(y1 - 0.5)) + 1, max(0, int(np.ceil(x0 - 0.5))) : int(np.floor(x1 - 0.5)) + 1] = 1.0
    return mask_coverage(mask, grid)


def mask_coverage(mask: np.ndarray, grid: int) -> np.ndarray:
    """(grid, grid) share of each patch covered by a (H, W) mask (e.g. SimplerEnv's segmentation of the
    task objects), by area averaging: the model sees the whole frame resized to a square."""
    return np.asarray(Image.fromarray(mask.astype(np.float32), mode="F").resize((grid, grid), Image.BOX)).clip(0, 1)


def object_mass(fused: np.ndarray, coverage: np.ndarray) -> float:
    """Share of the fused attention that falls on the task-relevant objects: 1 all on them, 0 none."""
    fused = np.asarray(fused, np.float64).reshape(coverage.shape)
    return float((fused * coverage).sum() / max(fused.sum(), 1e-12))
