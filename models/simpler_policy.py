"""The student as a SimplerEnv policy, following SimplerEnv's own adapters (../shared/notes/simpler-env.md §6).

`step(image, instruction)` → `(prediction, action)` where action = {world_vector (3), rot_axangle (3),
gripper (1), terminate_episode (1)}:
- image resized to 224 x 224 with area averaging (cv2.INTER_AREA's equivalent in PIL: BOX);
- unnorm key per robot: `bridge_orig/1.0.0` (WidowX), `fractal20220817_data/0.1.0` (Google robot);
- a 4-step chunk predicted every step, combined by action ensembling (weights exp(-temp * i) over the
  predictions for the current step, oldest first; temp -0.8 favours newer ones);
- roll/pitch/yaw → axis-angle; WidowX gripper absolute (+1 open, -1 closed); Google robot relative
  (+1 close, -1 open) with a sticky repeat of the command.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from PIL import Image

UNNORM_KEYS = {"widowx": "bridge_orig/1.0.0", "google_robot": "fractal20220817_data/0.1.0"}


def euler_to_axangle(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Static-axes xyz Euler angles (transforms3d 'sxyz') → axis * angle."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    R = np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])
    angle = float(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)))
    if angle < 1e-8:
        return np.zeros(3)
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * np.sin(angle))
    return axis / np.linalg.norm(axis) * angle


class ActionEnsembler:
    def __init__(self, horizon: int, temp: float):
        self.horizon, self.temp = horizon, temp
        self.history: deque[np.ndarray] = deque(maxlen=horizon)

    def reset(self) -> None:
        self.history.clear()

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        self.history.append(chunk)
        n = len(self.history)
        preds = np.stack([pred[i] for i, pred in zip(range(n - 1, -1, -1), self.history)])  # oldest first
        w = np.exp(-self.temp * np.arange(n))
        return (w[:, None] * preds).sum(0) / w.sum()


class SimplerPolicy:
    def __init__(self, model, processor, robot: str, reason: bool = False, action_scale: float = 1.0,
                 ensemble_temp: float = -0.8, sticky_repeat: int = 10):
        if robot not in UNNORM_KEYS:
            raise ValueError(f"robot must be one of {sorted(UNNORM_KEYS)}")
        self.model, self.processor, self.robot, self.reason = model, processor, robot, reason
        self.unnorm_key = UNNORM_KEYS[robot]
        self.action_scale, self.sticky_repeat = action_scale, sticky_repeat
        self.ensembler = ActionEnsembler(processor.action_chunk_size, ensemble_temp)
        self.reset("")

    def reset(self, instruction: str) -> None:
        self.instruction = instruction
        self.ensembler.reset()
        self.prev_open: float | None = None
        self.sticky_value, self.sticky_left = 0.0, 0
        self.traces: list[str] = []

    def step(self, image: np.ndarray, instruction: str):
        from models.spatialvla.policy import predict

        if instruction != self.instruction:
            self.reset(instruction)
        small = np.asarray(Image.fromarray(image).resize((224, 224), Image.BOX))
        pred = predict(self.model, self.processor, small, instruction, self.unnorm_key, reason=self.reason)
        self.traces.append(pred.reasoning)
        a = self.ensembler(pred.actions)
        action = {
            "world_vector": a[:3] * self.action_scale,
            "rot_axangle": euler_to_axangle(*a[3:6]) * self.action_scale,
            "gripper": np.array([self._gripper(float(a[6]))]),
            "terminate_episode": np.array([0.0]),
        }
        return pred, action

    def _gripper(self, open_prob: float) -> float:
        if self.robot == "widowx":
            return 2.0 * (open_prob > 0.5) - 1.0
        # Google robot: relative command (+1 close, -1 open), repeated for a while once issued.
        rel = 0.0 if self.prev_open is None else self.prev_open - open_prob
        self.prev_open = open_prob
        if self.sticky_left == 0 and abs(rel) > 0.5:
            self.sticky_value, self.sticky_left = rel, self.sticky_repeat
        if self.sticky_left > 0:
            self.sticky_left -= 1
            return self.sticky_value
        return 0.0
