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
) -> tuple[SpatialVLAForConditionalGeneration, SpatialVLAProcessor]:
    """A freshly initialised student of a named shape, with a tokenizer trained on `texts` and a bin
    policy fitted on the normalised actions (SpatialVLA's recipe for a new action distribution)."""
    tokenizer = build_tokenizer(texts, vocab_size)
    norm = np.concatenate([normalize(a, statistics[k]["action"]) for k, a in actions_by_key.items()])
    processor = SpatialVLAProcessor(tokenizer, statistics, fit_bin_policy(norm, min_sigma), max_reasoning_tokens=max_reasoning_tokens,
                                    action_chunk_size=action_chunk_size, min_sigma=min_sigma)
    config = spatialvla_config(shape, len(tokenizer), processor.image_token_index, processor.action_token_begin_idx)
    torch.manual_seed(seed)
    return SpatialVLAForConditionalGeneration(config), processor


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[SpatialVLAForConditionalGeneration, SpatialVLAProcessor]:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json; not a checkpoint directory")
    model = SpatialVLAForConditionalGeneration.from_pretrained(path).to(device)
    return model.eval(), SpatialVLAProcessor.from_pretrained(path)


@dataclass
class Prediction:
    actions: np.ndarray  # (chunk, 7) in the dataset's units, gripper 0/1 (1 = open)
    grid_ids: np.ndarray  # (chunk, 3)
    reasoning: str  # the generated trace ("" in action-only mode)


@torch.no_grad()
def predict(model, processor: SpatialVLAProcessor, image, instruction: str, unnorm_key: str, reason: bool = True) -> Prediction:
    """Reason-then-act (generate the trace, then the action tokens) or action-only (`reason=False`)."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in processor.inference_inputs([image], [instruction]).items()}
    reasoning_ids, grid = model.generate_actions(
        **inputs,
        action_steps=processor.action_chunk_size,
        eos_token_id=processor.tokenizer.eos_token_id,
        max_reasoning_tokens=processor.max_reasoning_tokens if reason else 0,
    )
    grid = grid[0].cpu().numpy()
    text = processor.tokenizer.decode(reasoning_ids[0].tolist(), skip_special_tokens=True) if reason else ""
    return Prediction(processor.decode_actions(grid, unnorm_key), grid, text)
