"""Tiny tabletop scenes for the sample datasets: objects with known positions, a scripted pick/place.

Pure numpy + PIL, deterministic from a seed. The world frame follows the robot base: x forward,
y left, z up (metres). Each episode is a scripted demonstration of one instruction:

    approach the source object -> grasp (gripper closes) -> lift -> carry to the target -> release -> retreat

so actions move toward an object and gripper events happen where a teacher would expect them. Object
bounding boxes are known in every camera image, per step (the carried object moves with the gripper);
they let later stages score attention maps against the task-relevant regions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

# name, colour, shape; the first four can be picked up, the others are places to put things.
GRASPABLE = [
    ("red block", (200, 40, 40), "box"),
    ("green cube", (40, 160, 60), "box"),
    ("yellow sponge", (225, 200, 40), "box"),
    ("orange carrot", (235, 120, 30), "box"),
]
RECEPTACLES = [
    ("blue plate", (40, 80, 200), "disc"),
    ("pink bowl", (225, 110, 170), "disc"),
    ("purple towel", (130, 60, 170), "box"),
]
TASKS = ("put the {src} on the {tgt}", "pick up the {src}", "move the {src} near the {tgt}")
HOME = np.array([0.27, 0.0, 0.12])
X_RANGE, Y_RANGE = (0.20, 0.44), (-0.15, 0.15)


@dataclass
class SceneObject:
    name: str
    color: tuple[int, int, int]
    shape: str
    xy: np.ndarray  # initial position on the table
    size: float  # half extent, metres


@dataclass
class Episode:
    """One scripted demonstration, before it is written in a dataset's feature spec."""

    instruction: str
    task: str
    objects: list[SceneObject]
    source: int  # index of the object that is moved
    target: int | None  # index of the object it is moved to (None for "pick up")
    ee: np.ndarray  # (T, 3) end-effector position
    rpy: np.ndarray  # (T, 3) end-effector orientation
    gripper_open: np.ndarray  # (T,) 1 = open, 0 = closed (state)
    object_xyz: np.ndarray  # (T, n_objects, 3)
    phases: list[str] = field(default_factory=list)  # phase name per step
    has_language: bool = True  # False: the dataset records this episode without its instruction

    @property
    def recorded_instruction(self) -> str:
        return self.instruction if self.has_language else ""

    @property
    def num_steps(self) -> int:
        return len(self.ee)


def make_episode(rng: np.random.Generator) -> Episode:
    # source (graspable), target (receptacle), and maybe one distractor of either kind
    pool = [GRASPABLE[i] for i in rng.permutation(len(GRASPABLE))]
    kinds = [pool.pop(), RECEPTACLES[int(rng.integers(len(RECEPTACLES)))]] + ([pool.pop()] if rng.random() < 0.5 else [])
    objects: list[SceneObject] = []
    while len(objects) < len(kinds):  # rejection-sample positions that do not overlap
        xy = np.array([rng.uniform(*X_RANGE), rng.uniform(*Y_RANGE)])
        if all(np.linalg.norm(xy - o.xy) > 0.09 for o in objects):
            name, color, shape = kinds[len(objects)]
            objects.append(SceneObject(name, color, shape, xy, float(rng.uniform(0.022, 0.03))))
    template = TASKS[int(rng.integers(len(TASKS)))]
    source, target = 0, (1 if "{tgt}" in template else None)
    instruction = template.format(src=objects[source].name, tgt=objects[target].name if target is not None else "")

    src_xy = objects[source].xy
    tgt_xy = objects[target].xy + np.array([0.0, 0.05 if "near" in template else 0.0]) if target is not None else None
    waypoints: list[tuple[str, np.ndarray, float]] = [("start", HOME, 1.0)]
    waypoints += [("approach", np.r_[src_xy, 0.08], 1.0), ("approach", np.r_[src_xy, 0.025], 1.0)]
    waypoints += [("grasp", np.r_[src_xy, 0.025], 0.0), ("lift", np.r_[src_xy, 0.10], 0.0)]
    if tgt_xy is not None:
        mid = (src_xy + tgt_xy) / 2
        waypoints += [("transport", np.r_[mid, 0.11], 0.0), ("transport", np.r_[tgt_xy, 0.09], 0.0)]
        waypoints += [("place", np.r_[tgt_xy, 0.045], 0.0), ("release", np.r_[tgt_xy, 0.045], 1.0)]
        waypoints += [("retreat", np.r_[tgt_xy, 0.12], 1.0)]
    else:
        waypoints += [("lift", np.r_[src_xy, 0.14], 0.0), ("hold", np.r_[src_xy, 0.14], 0.0)]

    ee, grip, phases = [], [], []
    for (_, a, _), (phase, b, g) in zip(waypoints, waypoints[1:]):
        n = 1 if phase in ("grasp", "release", "hold") else 2
        for k in range(1, n + 1):
            ee.append(a + (b - a) * k / n + rng.normal(0, 0.002, 3))
            grip.append(g)
            phases.append(phase)
    ee = np.array([HOME, *ee])
    grip = np.array([1.0, *grip])
    phases = ["start", *phases]
    rpy = np.cumsum(rng.normal(0, 0.02, (len(ee), 3)), axis=0)

    obj_xyz = np.zeros((len(ee), len(objects), 3))
    for i, o in enumerate(objects):
        obj_xyz[:, i] = np.r_[o.xy, 0.0]
    for t in range(len(ee)):  # the source rides with the closed gripper and stays where it was released
        if grip[t] == 0.0 and phases[t] != "grasp":
            obj_xyz[t:, source] = np.r_[ee[t, :2], max(ee[t, 2] - 0.025, 0.0)]
    return Episode(instruction, template.split(" ")[0], objects, source, target, ee, rpy, grip, obj_xyz, phases)


# --------------------------------------------------------------------------------------------------
# Rendering: two fixed pinhole-like views of the table (front and side).


def project(xyz: np.ndarray, view: str, height: int, width: int) -> tuple[float, float, float]:
    """World point -> (u, v, scale) in pixels for a camera; scale grows as the point comes closer."""
    x, y, z = xyz
    if view == "front":  # behind the robot looking forward/down
        u = width * (0.5 - y / 0.40)
        v = height * (0.93 - (x - 0.18) / 0.30 * 0.8) - z * height * 1.1
        scale = 1.0 + 2.0 * z
    else:  # from the left side of the table
        u = width * (0.12 + (x - 0.18) / 0.30 * 0.78)
        v = height * (0.82 - (y + 0.15) / 0.30 * 0.35) - z * height * 1.2
        scale = 1.0 + 1.5 * z
    return float(u), float(v), float(scale)


def object_box(ep: Episode, t: int, i: int, view: str, height: int, width: int) -> list[float]:
    o = ep.objects[i]
    u, v, s = project(ep.object_xyz[t, i], view, height, width)
    r = o.size * s * width / 0.40
    return [max(u - r, 0.0), max(v - r, 0.0), min(u + r, width - 1.0), min(v + r, height - 1.0)]


def render(ep: Episode, t: int, view: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    table = np.stack([170 + 25 * yy / height, 135 + 20 * xx / width, 95 + 10 * yy / height], -1)
    img = np.clip(table + rng.normal(0, 4, (height, width, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    order = np.argsort(ep.object_xyz[t, :, 2])  # draw lower objects first
    for i in order:
        o = ep.objects[i]
        box = object_box(ep, t, i, view, height, width)
        (d.rectangle if o.shape == "box" else d.ellipse)(box, fill=o.color, outline=(30, 30, 30))
    u, v, s = project(ep.ee[t], view, height, width)
    half = (10 if ep.gripper_open[t] > 0.5 else 5) * s
    d.rectangle([u - 3 * s, v - 22 * s, u + 3 * s, v - 4 * s], fill=(60, 60, 60))  # wrist
    for side in (-1, 1):  # two fingers
        d.rectangle([u + side * half - 2 * s, v - 6 * s, u + side * half + 2 * s, v + 6 * s], fill=(40, 40, 40))
    return np.asarray(im)


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
