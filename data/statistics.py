"""Action and proprio statistics in the shape SpatialVLA's processor reads (`statistics[unnorm_key]`)."""

from __future__ import annotations

import numpy as np

# OpenVLA/SpatialVLA name bridge by its renamed directory; keep that key so their checkpoints' statistics
# and SimplerEnv's adapter (unnorm_key "bridge_orig/1.0.0") line up with ours.
UNNORM_KEY_ALIASES = {"bridge_dataset": "bridge_orig"}


def unnorm_key(dataset: str, version: str) -> str:
    return f"{UNNORM_KEY_ALIASES.get(dataset, dataset)}/{version}"


def _summary(x: np.ndarray, mask: list[bool] | None = None) -> dict:
    x = np.asarray(x, dtype=np.float64)
    out = {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "max": x.max(0).tolist(),
        "min": x.min(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
    }
    if mask is not None:
        out["mask"] = mask
    return out


def dataset_statistics(actions: np.ndarray, states: np.ndarray, num_trajectories: int) -> dict:
    """mean/std/min/max/q01/q99 per dimension; the gripper (last action dim) is not normalised."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or len(actions) == 0:
        raise ValueError(f"statistics need a non-empty (N, D) action array, got shape {actions.shape}")
    d = actions.shape[1]
    return {
        "action": _summary(actions, mask=[True] * (d - 1) + [False]),
        "proprio": _summary(states) if len(states) else {},
        "num_transitions": int(len(actions)),
        "num_trajectories": int(num_trajectories),
    }
