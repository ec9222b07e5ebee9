"""The project's one action convention, and the conversions that reach it.

Every parsed step carries a 7-D action

    [dx, dy, dz, droll, dpitch, dyaw, gripper]

with end-effector deltas as the dataset records them and an **absolute gripper, 1 = open, 0 = closed**:
the target of OpenVLA's / SpatialVLA's RLDS transforms (see ../shared/notes/rlds-formats.md §5).

- bridge (`bridge_dataset` / `bridge_orig`): dims 0-5 as recorded, gripper binarised (`binarize_gripper`).
- fractal (`fractal20220817_data`): world_vector ++ rotation_delta ++ `rel2abs_gripper(gripper_closedness)`.

The raw action is kept beside it, so nothing is lost. Normalisation is BOUNDS_Q99 on the masked dims.
"""

from __future__ import annotations

import numpy as np

ACTION_DIM = 7
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")


def binarize_gripper(g: np.ndarray) -> np.ndarray:
    """Bridge gripper → {0, 1}: > 0.95 open, < 0.05 closed; in-between values take the next settled value.

    Scans backwards from the last raw value, as OpenVLA's `binarize_gripper_actions` does.
    """
    g = np.asarray(g, dtype=np.float32)
    out = np.empty_like(g)
    carry = float(g[-1]) if len(g) else 0.0
    for i in range(len(g) - 1, -1, -1):
        if g[i] > 0.95:
            carry = 1.0
        elif g[i] < 0.05:
            carry = 0.0
        out[i] = carry
    return out


def rel2abs_gripper(rel: np.ndarray) -> np.ndarray:
    """Fractal relative gripper (+1 close, -1 open, 0 hold) → absolute (1 open, 0 closed).

    |v| <= 0.1 holds the previous state; the start state is the opposite of the first command (open if
    there is none), as in OpenVLA's `rel2abs_gripper_actions`.
    """
    rel = np.asarray(rel, dtype=np.float32).reshape(-1)
    cmd = np.where(rel < -0.1, 1.0, np.where(rel > 0.1, -1.0, 0.0))  # +1 = open, -1 = close
    nonzero = np.flatnonzero(cmd)
    state = -cmd[nonzero[0]] if len(nonzero) else 1.0
    out = np.empty_like(cmd)
    for i, c in enumerate(cmd):
        if c != 0:
            state = c
        out[i] = state
    return ((out + 1.0) / 2.0).astype(np.float32)


def normalize(actions: np.ndarray, stats: dict) -> np.ndarray:
    """BOUNDS_Q99: clip(2 (x - q01) / (q99 - q01) - 1, -1, 1) on dims where `mask` is true.

    Dims whose q01 == q99 map to 0; unmasked dims (the gripper) pass through unchanged.
    """
    a = np.asarray(actions, dtype=np.float32)
    q01, q99 = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
    mask = np.asarray(stats.get("mask", [True] * (ACTION_DIM - 1) + [False]), bool)
    span = q99 - q01
    norm = np.clip(2.0 * (a - q01) / (span + 1e-8) - 1.0, -1.0, 1.0)
    norm = np.where(span == 0, 0.0, norm)
    return np.where(mask, norm, a).astype(np.float32)


def unnormalize(norm: np.ndarray, stats: dict) -> np.ndarray:
    """Inverse of `normalize` on masked dims: 0.5 (x + 1) (q99 - q01) + q01."""
    n = np.asarray(norm, dtype=np.float32)
    q01, q99 = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
    mask = np.asarray(stats.get("mask", [True] * (ACTION_DIM - 1) + [False]), bool)
    return np.where(mask, 0.5 * (n + 1.0) * (q99 - q01) + q01, n).astype(np.float32)


def action_chunks(actions: np.ndarray, chunk: int) -> np.ndarray:
    """(T, 7) → (T, chunk, 7): the action at t and the next chunk-1, repeating the last past the end."""
    a = np.asarray(actions, dtype=np.float32)
    idx = np.minimum(np.arange(len(a))[:, None] + np.arange(chunk)[None, :], len(a) - 1)
    return a[idx]
