"""Build, load and run the student: what the fine-tune, evaluate, attention and SimplerEnv stages share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.actions import normalize
from models.spatialvla.action_tokenizer import fit_bin_policy
from models.spatialvla.configuration_spatialvla import spatialvla_config
from models.spatialvla.modeling_spatialvla import SpatialVLAForConditionalGeneration
from models.spatialvla.processing_spatialvla import SpatialVLAProcessor, build_tokenizer


def build_student(
    shape: str,
    texts: list[str],
    statistics: dict,
    actions_by_key: dict[str, np.ndarray],
    vocab_size: int = 1024,
    min_sigma: float = 0.0,
    max_reasoning_tokens: int = 244,
    action_chunk_size: int = 4,
    seed: int = 0,
    action_first: bool = False,
) -> tuple[SpatialVLAForConditionalGeneration, SpatialVLAProcessor]:
    """A freshly initialised student of a named shape, with a tokenizer trained on `texts` and a bin
    policy fitted on the normalised actions (SpatialVLA's recipe for a new action distribution)."""
    tokenizer = build_tokenizer(texts, vocab_size)
    norm = np.concatenate([normalize(a, statistics[k]["action"]) for k, a in actions_by_key.items()])
    processor = SpatialVLAProcessor(tokenizer, statistics, fit_bin_policy(norm, min_sigma), max_reasoning_tokens=max_reasoning_tokens,
                                    action_chunk_size=action_chunk_size, min_sigma=min_sigma, action_first=action_first)
    config = spatialvla_config(shape, len(tokenizer), processor.image_token_index, processor.action_token_begin_idx)
    torch.manual_seed(seed)
    return SpatialVLAForConditionalGeneration(config), processor


def load_checkpoint(path: str | Path, device: str = "cpu", dtype=torch.float32) -> tuple[SpatialVLAForConditionalGeneration, SpatialVLAProcessor]:
    path = Path(path)
    model = SpatialVLAForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device)
    return model.eval(), SpatialVLAProcessor.from_pretrained(path)


@dataclass
class Prediction:
    actions: np.ndarray  # (chunk, 7) in the dataset's units, gripper 0/1 (1 = open)
    grid_ids: np.ndarray  # (chunk, 3)
    reasoning: str  # the generated trace ("" in action-only mode)


@dataclass
class BatchPrediction:
    actions: np.ndarray  # (B, chunk, 7) in each dataset's units, gripper 0/1
    grid_ids: np.ndarray  # (B, chunk, 3)
    reasoning: list[str]  # one trace per row ("" in action-only mode)


@torch.no_grad()
def predict_action(model, processor: SpatialVLAProcessor, images: list, instructions: list[str], unnorm_keys: list[str],
                   reason: bool = True) -> BatchPrediction:
    """A batch of observations → de-normalised (B, chunk, 7) action chunks and the traces.

    `reason=True`: reason-then-act (or, for an `action_first` processor, act then explain); `reason=False`:
    action tokens only. Rows are grouped by prompt length (no padding, so a row's result is the same
    alone or in a batch); each group is decoded greedily with the KV cache.
    """
    device = next(model.parameters()).device
    n = len(images)
    if not (len(instructions) == len(unnorm_keys) == n):
        raise ValueError(f"predict_action: {n} images, {len(instructions)} instructions, {len(unnorm_keys)} unnorm_keys")
    groups: dict[int, list[int]] = {}
    for i, text in enumerate(instructions):
        groups.setdefault(len(processor.prompt_ids(text)), []).append(i)
    grid = np.zeros((n, processor.action_chunk_size, 3), dtype=np.int64)
    traces = [""] * n
    for rows in groups.values():
        inputs = processor.inference_inputs([images[i] for i in rows], [instructions[i] for i in rows], [unnorm_keys[i] for i in rows])
        inputs = {k: v.to(device) for k, v in inputs.items()}
        reasoning_ids, g = model.generate_actions(
            **inputs,
            action_steps=processor.action_chunk_size,
            eos_token_id=processor.tokenizer.eos_token_id,
            max_reasoning_tokens=processor.max_reasoning_tokens if reason else 0,
            action_first=processor.action_first,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
        g = g.cpu().numpy()
        for j, i in enumerate(rows):
            grid[i] = g[j]
            if reason:
                traces[i] = processor.tokenizer.decode(reasoning_ids[j].tolist(), skip_special_tokens=True)
    actions = np.stack([processor.decode_actions(grid[i], unnorm_keys[i]) for i in range(n)])
    return BatchPrediction(actions, grid, traces)


def predict(model, processor: SpatialVLAProcessor, image, instruction: str, unnorm_key: str, reason: bool = True) -> Prediction:
    """One observation (see `predict_action`)."""
    p = predict_action(model, processor, [image], [instruction], [unnorm_key], reason)
    return Prediction(p.actions[0], p.grid_ids[0], p.reasoning[0])
