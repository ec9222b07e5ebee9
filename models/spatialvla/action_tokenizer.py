"""SpatialVLA's adaptive action grids: a normalised 7-D action becomes 3 tokens.

    translation (x, y, z) -> spherical (theta, phi, r) -> one of 16 x 32 x 8 = 4096 tokens
    rotation (roll, pitch, yaw)                       -> one of 16 x 16 x 16 = 4096 tokens
    gripper (1 = open)                                -> one of 2 tokens

Grid ids: translation 0-4095 (i_theta*256 + i_phi*8 + i_r), rotation 4096-8191 (i_roll*256 + i_pitch*16
+ i_yaw), gripper 8192-8193; token strings `<ACTION00000>`..`<ACTION08193>`. Bin edges come from a
`bin_policy` in the schema of SpatialVLA's processor_config.json:

    {"translation": {"theta_bins": [17 edges], "phi_bins": [33], "r_bins": [9]},
     "rotation": {"roll_bins": [17], "pitch_bins": [17], "yaw_bins": [17]}}

Read it from a checkpoint; `fit_bin_policy` makes one for a model trained from scratch the way SpatialVLA
does (a Gaussian per axis, equal probability mass per bin). Decoding uses bin midpoints.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

NUM_BINS = {
    "translation": {"theta_bins": 16, "phi_bins": 32, "r_bins": 8},
    "rotation": {"roll_bins": 16, "pitch_bins": 16, "yaw_bins": 16},
    "gripper": 2,
}
AXIS_RANGES = {
    "theta_bins": (0.0, math.pi),
    "phi_bins": (-math.pi, math.pi),
    "r_bins": (0.0, math.sqrt(3.0)),
    "roll_bins": (-1.0, 1.0),
    "pitch_bins": (-1.0, 1.0),
    "yaw_bins": (-1.0, 1.0),
}
TRANSLATION_TOKENS, ROTATION_TOKENS, GRIPPER_TOKENS = 4096, 4096, 2
VOCAB_SIZE = TRANSLATION_TOKENS + ROTATION_TOKENS + GRIPPER_TOKENS  # 8194
TOKENS_PER_STEP = 3


def token_strings() -> list[str]:
    return [f"<ACTION{i:05d}>" for i in range(VOCAB_SIZE)]


def to_spherical(xyz: np.ndarray) -> np.ndarray:
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.stack([np.arctan2(np.hypot(x, y), z), np.arctan2(y, x), np.sqrt(x * x + y * y + z * z)], -1)


def from_spherical(tpr: np.ndarray) -> np.ndarray:
    t, p, r = tpr[..., 0], tpr[..., 1], tpr[..., 2]
    return np.stack([r * np.sin(t) * np.cos(p), r * np.sin(t) * np.sin(p), r * np.cos(t)], -1)


def uniform_bin_policy() -> dict:
    return {
        group: {axis: np.linspace(*AXIS_RANGES[axis], n + 1).tolist() for axis, n in NUM_BINS[group].items()}
        for group in ("translation", "rotation")
    }


def fit_bin_policy(norm_actions: np.ndarray, min_sigma: float = 0.0) -> dict:
    """Equal-mass edges from a Gaussian fitted per axis on normalised actions (SpatialVLA's recipe)."""
    a = np.asarray(norm_actions, dtype=np.float64).reshape(-1, 7)
    values = dict(zip(("theta_bins", "phi_bins", "r_bins"), to_spherical(a[:, :3]).T))
    values.update(zip(("roll_bins", "pitch_bins", "yaw_bins"), a[:, 3:6].T))
    policy: dict = {"translation": {}, "rotation": {}}
    for group in policy:
        for axis, n in NUM_BINS[group].items():
            lo, hi = AXIS_RANGES[axis]
            v = values[axis]
            dist = NormalDist(float(v.mean()), max(float(v.std()), min_sigma, 1e-3))
            cdf = np.linspace(dist.cdf(lo), dist.cdf(hi), n + 1)
            edges = [lo] + [min(max(dist.inv_cdf(min(max(c, 1e-12), 1 - 1e-12)), lo), hi) for c in cdf[1:-1]] + [hi]
            policy[group][axis] = edges
    return policy


class SpatialActionTokenizer:
    """Normalised (..., 7) actions <-> (..., 3) grid ids in [0, 8194)."""

    def __init__(self, bin_policy: dict | None = None):
        self.bin_policy = bin_policy or uniform_bin_policy()
        self.edges = {}
        for group, n_bins in (("translation", NUM_BINS["translation"]), ("rotation", NUM_BINS["rotation"])):
            for axis, n in n_bins.items():
                e = np.asarray(self.bin_policy[group][axis], dtype=np.float64)
                if e.shape != (n + 1,) or np.any(np.diff(e) < 0):
                    raise ValueError(f"bin_policy.{group}.{axis}: expected {n + 1} non-decreasing edges, got {e.shape[0]}")
                self.edges[axis] = e

    def _index(self, axis: str, v: np.ndarray) -> np.ndarray:
        e = self.edges[axis]
        return np.clip(np.digitize(v, e[1:-1]), 0, len(e) - 2)

    def _mid(self, axis: str, i: np.ndarray) -> np.ndarray:
        e = self.edges[axis]
        return (e[i] + e[i + 1]) / 2

    def encode(self, norm_actions: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(norm_actions, dtype=np.float64), -1.0, 1.0)
        tpr = to_spherical(a[..., :3])
        it, ip, ir = (self._index(k, tpr[..., j]) for j, k in enumerate(("theta_bins", "phi_bins", "r_bins")))
        translation = it * 256 + ip * 8 + ir
        iro, ipi, iya = (self._index(k, a[..., 3 + j]) for j, k in enumerate(("roll_bins", "pitch_bins", "yaw_bins")))
        rotation = TRANSLATION_TOKENS + iro * 256 + ipi * 16 + iya
        gripper = TRANSLATION_TOKENS + ROTATION_TOKENS + (a[..., 6] >= 0.5).astype(np.int64)
        return np.stack([translation, rotation, gripper], -1).astype(np.int64)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """(..., 3) ids → (..., 7) normalised actions; each id is first clipped into its own sub-range."""
        ids = np.asarray(ids, dtype=np.int64)
        t = np.clip(ids[..., 0], 0, TRANSLATION_TOKENS - 1)
        r = np.clip(ids[..., 1] - TRANSLATION_TOKENS, 0, ROTATION_TOKENS - 1)
        g = np.clip(ids[..., 2] - TRANSLATION_TOKENS - ROTATION_TOKENS, 0, 1)
        tpr = np.stack([self._mid("theta_bins", t // 256), self._mid("phi_bins", (t // 8) % 32), self._mid("r_bins", t % 8)], -1)
        xyz = np.clip(from_spherical(tpr), -1.0, 1.0)
        rpy = np.stack([self._mid("roll_bins", r // 256), self._mid("pitch_bins", (r // 16) % 16), self._mid("yaw_bins", r % 16)], -1)
        return np.concatenate([xyz, rpy, g[..., None].astype(np.float64)], -1).astype(np.float32)

    @staticmethod
    def slot_ranges() -> list[tuple[int, int]]:
        """Grid-id range [lo, hi) allowed at each of the 3 slots of a step (used by constrained decoding)."""
        return [(0, TRANSLATION_TOKENS), (TRANSLATION_TOKENS, TRANSLATION_TOKENS + ROTATION_TOKENS), (TRANSLATION_TOKENS + ROTATION_TOKENS, VOCAB_SIZE)]
