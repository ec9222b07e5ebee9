"""The bundled sample datasets, written by TFDS's own builder in the real on-disk format.

`write_sample_datasets(out_dir, cfg)` produces

    <out_dir>/bridge_dataset/1.0.0/            train + val, the BridgeData V2 release spec
    <out_dir>/fractal20220817_data/0.1.0/      train, the RT-1 spec
    <out_dir>/bridge/0.1.0/                    train + test, the Open-X copy of Bridge (only when asked)

with `dataset_info.json`, `features.json` and shard names exactly as `tfds build` writes them (feature
specs: ../shared/notes/rlds-formats.md §4). Episodes are scripted tabletop demonstrations
(`data/scenes.py`); images are JPEG. Bridge has two real views (`image_0` front, `image_1` side) and,
like many real Bridge episodes, all-zero `image_2`/`image_3`. Bridge's last action is all zeros, as in
the release.

Beside the TFDS files each dataset gets `sample_scenes.json`: the generator settings and, per episode
(keyed by the SHA-1 of its first primary-camera JPEG, since fractal records carry no episode id), the
instruction and every object's pixel box per step and camera. It is how later stages know where the
task-relevant objects are.

Deterministic from `seed`: the same settings give the same parsed content (TFDS shuffles records by key
hash, also deterministically).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from data.io import read_json, write_json_atomic
from data.scenes import Episode, jpeg, make_episode, object_box, render

log = logging.getLogger("refinevla")
SIDECAR = "sample_scenes.json"


class SampleConfig(BaseModel):
    """Settings of the bundled sample datasets (the demo's default input)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Random seed; the same seed gives the same episodes.")
    bridge_train_episodes: int = Field(6, ge=1, le=1000, description="Episodes in bridge_dataset's train split.")
    bridge_val_episodes: int = Field(2, ge=1, le=1000, description="Episodes in bridge_dataset's val split.")
    fractal_episodes: int = Field(4, ge=0, le=1000, description="Episodes in fractal20220817_data's train split (0: skip it).")
    openx_bridge_episodes: int = Field(0, ge=0, le=1000, description="Episodes per split (train, test) of the Open-X `bridge` 0.1.0 copy (0: skip it).")
    bridge_unlabelled_episodes: int = Field(0, ge=0, description="Bridge train episodes recorded without language (has_language False, empty instruction).")
    num_shards: int = Field(2, ge=1, le=64, description="TFRecord shards per split.")
    jpeg_quality: int = Field(90, ge=30, le=100, description="JPEG quality of the rendered frames.")


def write_sample_datasets(out_dir: str | Path, cfg: SampleConfig = SampleConfig()) -> list[Path]:
    """Write the sample datasets under `out_dir` (skipped when already written with the same settings)."""
    out_dir = Path(out_dir)
    specs = [("bridge_dataset", "1.0.0", {"train": cfg.bridge_train_episodes, "val": cfg.bridge_val_episodes})]
    if cfg.fractal_episodes:
        specs.append(("fractal20220817_data", "0.1.0", {"train": cfg.fractal_episodes}))
    if cfg.openx_bridge_episodes:
        specs.append(("bridge", "0.1.0", {"train": cfg.openx_bridge_episodes, "test": cfg.openx_bridge_episodes}))
    written = []
    for name, version, splits in specs:
        ds_dir = out_dir / name / version
        settings = {"name": name, "version": version, "splits": splits, **cfg.model_dump()}
        if _up_to_date(ds_dir, settings):
            log.info("sample %s is up to date at %s", name, ds_dir)
        else:
            _write_one(out_dir, name, settings, cfg)
        written.append(ds_dir)
    return written


def _up_to_date(ds_dir: Path, settings: dict) -> bool:
    side = ds_dir / SIDECAR
    if not ds_dir.exists():
        return False
    if not side.exists():
        raise FileExistsError(f"{ds_dir} exists but is not a sample dataset written by refinevla; refusing to overwrite it")
    return read_json(side).get("settings") == settings


def _write_one(out_dir: Path, name: str, settings: dict, cfg: SampleConfig) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    ds_dir = out_dir / name / settings["version"]
    if ds_dir.exists():
        shutil.rmtree(ds_dir)  # ours (checked by _up_to_date), with other settings
    offset = {"bridge_dataset": 0, "fractal20220817_data": 1000, "bridge": 2000}[name]
    rng = np.random.default_rng(cfg.seed + offset)
    plans = {split: [make_episode(rng) for _ in range(n)] for split, n in settings["splits"].items()}
    for ep in plans.get("train", [])[: cfg.bridge_unlabelled_episodes if name == "bridge_dataset" else 0]:
        ep.has_language = False  # recorded without language, as some real Bridge episodes are
    builder_cls = {"bridge_dataset": _bridge_builder, "fractal20220817_data": _fractal_builder, "bridge": _openx_bridge_builder}[name]()
    scenes: dict[str, dict] = {}
    builder = builder_cls(data_dir=str(out_dir), plans=plans, quality=cfg.jpeg_quality, seed=cfg.seed + offset, scenes=scenes)
    builder.download_and_prepare(
        # TFDS needs at least one episode per shard in every split
        download_config=tfds.download.DownloadConfig(num_shards=min(cfg.num_shards, *settings["splits"].values())),
        download_dir=str(out_dir / ".tfds-downloads"),
    )
    shutil.rmtree(out_dir / ".tfds-downloads", ignore_errors=True)
    write_json_atomic(ds_dir / SIDECAR, {"settings": settings, "episodes": scenes})
    log.info("wrote sample %s to %s", name, ds_dir)


def scene_key(primary_jpeg: bytes) -> str:
    return hashlib.sha1(primary_jpeg).hexdigest()


@functools.cache
def _scenes(sidecar: Path) -> dict:
    return read_json(sidecar)["episodes"]


def sample_object_boxes(dataset_dirs: list[str | Path], first_primary_jpeg: bytes, camera: str, step: int,
                        roles: tuple[str, ...] = ("source", "target")) -> list[list[float]] | None:
    """Pixel boxes [x0, y0, x1, y1] of an episode's task objects at `step` in `camera`, when the episode is one
    of the sample datasets in `dataset_dirs` (they hold `sample_scenes.json`); None for any other data."""
    key = scene_key(first_primary_jpeg)
    for d in dataset_dirs:
        sidecar = Path(d) / SIDECAR
        scene = _scenes(sidecar).get(key) if sidecar.exists() else None
        if scene is not None:
            return [o["boxes"][camera][step] for o in scene["objects"] if o["role"] in roles and camera in o["boxes"]]
    return None


def _episode_frames(ep: Episode, views: dict[str, str], hw: tuple[int, int], quality: int, seed: int):
    """JPEG bytes per camera per step, and the scene record (object boxes per camera per step)."""
    rng = np.random.default_rng(seed)
    frames = {cam: [jpeg(render(ep, t, view, *hw, rng), quality) for t in range(ep.num_steps)] for cam, view in views.items()}
    record = {
        "instruction": ep.instruction,  # the scripted task, also when the dataset records no language
        "has_language": ep.has_language,
        "task": ep.task,
        "phases": ep.phases,
        "objects": [
            {
                "name": o.name,
                "role": "source" if i == ep.source else "target" if i == ep.target else "distractor",
                "boxes": {cam: [object_box(ep, t, i, view, *hw) for t in range(ep.num_steps)] for cam, view in views.items()},
            }
            for i, o in enumerate(ep.objects)
        ],
    }
    return frames, record


def _language_embedding(text: str) -> np.ndarray:
    """A deterministic stand-in for the Universal Sentence Encoder embedding the real data carries."""
    v = np.random.default_rng(int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)).normal(size=512)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _sample_builder_base():
    """What both sample builders share: the episode plans they write, one generator per split."""
    import tensorflow_datasets as tfds

    class SampleBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        def __init__(self, *, plans, quality, seed, scenes, **kwargs):
            self._plans, self._quality, self._seed, self._scenes = plans, quality, seed, scenes
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in self._plans}

    return SampleBuilder


def _bridge_builder():
    import tensorflow_datasets as tfds

    img = lambda: tfds.features.Image(shape=(256, 256, 3), dtype=np.uint8, encoding_format="jpeg")  # noqa: E731

    class BridgeDataset(_sample_builder_base(), skip_registration=True):
        """BridgeData V2 release spec (`bridge_dataset` 1.0.0, i.e. OpenVLA's `bridge_orig`)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "steps": tfds.features.Dataset(
                            {
                                "observation": tfds.features.FeaturesDict(
                                    {
                                        "image_0": img(),
                                        "image_1": img(),
                                        "image_2": img(),
                                        "image_3": img(),
                                        "state": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                                    }
                                ),
                                "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                                "discount": tfds.features.Scalar(dtype=np.float32),
                                "reward": tfds.features.Scalar(dtype=np.float32),
                                "is_first": tfds.features.Scalar(dtype=np.bool_),
                                "is_last": tfds.features.Scalar(dtype=np.bool_),
                                "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                                "language_instruction": tfds.features.Text(),
                                "language_embedding": tfds.features.Tensor(shape=(512,), dtype=np.float32),
                            }
                        ),
                        "episode_metadata": tfds.features.FeaturesDict(
                            {
                                "file_path": tfds.features.Text(),
                                "episode_id": tfds.features.Scalar(dtype=np.int32),
                                "has_image_0": tfds.features.Scalar(dtype=np.bool_),
                                "has_image_1": tfds.features.Scalar(dtype=np.bool_),
                                "has_image_2": tfds.features.Scalar(dtype=np.bool_),
                                "has_image_3": tfds.features.Scalar(dtype=np.bool_),
                                "has_language": tfds.features.Scalar(dtype=np.bool_),
                            }
                        ),
                    }
                ),
            )

        def _generate_examples(self, split):
            blank = jpeg(np.zeros((256, 256, 3), np.uint8), self._quality)
            for i, ep in enumerate(self._plans[split]):
                frames, record = _episode_frames(ep, {"image_0": "front", "image_1": "side"}, (256, 256), self._quality, self._seed + i)
                self._scenes[scene_key(frames["image_0"][0])] = {"split": split, "episode_id": i, **record}
                state = np.concatenate([ep.ee, ep.rpy, ep.gripper_open[:, None]], 1).astype(np.float32)
                T = ep.num_steps
                action = np.zeros((T, 7), np.float32)
                action[:-1, :3] = ep.ee[1:] - ep.ee[:-1]
                action[:-1, 3:6] = ep.rpy[1:] - ep.rpy[:-1]
                action[:-1, 6] = ep.gripper_open[1:]
                change = np.flatnonzero(np.diff(ep.gripper_open))  # commands ramp like the real teleop values
                for c in change[:1]:
                    if c > 0:
                        action[c - 1, 6] = 0.5
                emb = _language_embedding(ep.recorded_instruction) if ep.has_language else np.zeros(512, np.float32)
                steps = [
                    {
                        "observation": {
                            "image_0": io.BytesIO(frames["image_0"][t]),
                            "image_1": io.BytesIO(frames["image_1"][t]),
                            "image_2": io.BytesIO(blank),
                            "image_3": io.BytesIO(blank),
                            "state": state[t],
                        },
                        "action": action[t],
                        "discount": 1.0,
                        "reward": float(t == T - 1),
                        "is_first": t == 0,
                        "is_last": t == T - 1,
                        "is_terminal": t == T - 1,
                        "language_instruction": ep.recorded_instruction,
                        "language_embedding": emb,
                    }
                    for t in range(T)
                ]
                meta = {
                    "file_path": f"/sample/raw/bridge_data_v2/{split}/out.npy",
                    "episode_id": i,
                    "has_image_0": True,
                    "has_image_1": True,
                    "has_image_2": False,
                    "has_image_3": False,
                    "has_language": ep.has_language,
                }
                yield f"{split}-{i}", {"steps": steps, "episode_metadata": meta}

    return BridgeDataset


def _fractal_builder():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)  # noqa: E731
    attr_names = ("collection_mode", "data_type", "env", "location", "objects_family", "task_family")

    class Fractal20220817Data(_sample_builder_base(), skip_registration=True):
        """RT-1 spec (`fractal20220817_data` 0.1.0): dict actions, instruction under observation."""

        VERSION = tfds.core.Version("0.1.0")

        def _info(self):
            features = {
                "aspects": tfds.features.FeaturesDict(
                    {k: tfds.features.Tensor(shape=(), dtype=np.bool_) for k in ("already_success", "feasible", "has_aspects", "success", "undesirable")}
                ),
                "attributes": tfds.features.FeaturesDict(
                    {
                        **{k: tfds.features.Tensor(shape=(), dtype=np.int64) for k in attr_names},
                        **{f"{k}_name": tfds.features.Tensor(shape=(), dtype=tf.string) for k in attr_names},
                    }
                ),
                "steps": tfds.features.Dataset(
                    {
                        "action": tfds.features.FeaturesDict(
                            {
                                "world_vector": f32(3),
                                "rotation_delta": f32(3),
                                "gripper_closedness_action": f32(1),
                                "base_displacement_vector": f32(2),
                                "base_displacement_vertical_rotation": f32(1),
                                "terminate_episode": tfds.features.Tensor(shape=(3,), dtype=np.int32),
                            }
                        ),
                        "observation": tfds.features.FeaturesDict(
                            {
                                "image": tfds.features.Image(shape=(256, 320, 3), dtype=np.uint8, encoding_format="jpeg"),
                                "natural_language_instruction": tfds.features.Tensor(shape=(), dtype=tf.string),
                                "natural_language_embedding": f32(512),
                                "base_pose_tool_reached": f32(7),
                                "gripper_closed": f32(1),
                                "gripper_closedness_commanded": f32(1),
                                "height_to_bottom": f32(1),
                                "orientation_start": f32(4),
                                "src_rotation": f32(4),
                                "orientation_box": f32(2, 3),
                                "robot_orientation_positions_box": f32(3, 3),
                                "workspace_bounds": f32(3, 3),
                                "rotation_delta_to_go": f32(3),
                                "vector_to_go": f32(3),
                            }
                        ),
                        "is_first": tfds.features.Tensor(shape=(), dtype=np.bool_),
                        "is_last": tfds.features.Tensor(shape=(), dtype=np.bool_),
                        "is_terminal": tfds.features.Tensor(shape=(), dtype=np.bool_),
                        "reward": tfds.features.Scalar(dtype=np.float32),
                    }
                ),
            }
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _generate_examples(self, split):
            quat = np.array([0.0, 0.0, 0.0, 1.0], np.float32)
            for i, ep in enumerate(self._plans[split]):
                frames, record = _episode_frames(ep, {"image": "front"}, (256, 320), self._quality, self._seed + 1000 + i)
                self._scenes[scene_key(frames["image"][0])] = {"split": split, "episode_id": i, **record}
                T = ep.num_steps
                closed = 1.0 - ep.gripper_open
                # relative gripper command: +1 close, -1 open, at the step that causes the change
                rel = np.zeros(T, np.float32)
                rel[:-1] = np.diff(closed)
                emb = _language_embedding(ep.instruction)
                goal = ep.object_xyz[-1, ep.source]
                steps = []
                for t in range(T):
                    nxt = min(t + 1, T - 1)
                    steps.append(
                        {
                            "action": {
                                "world_vector": (ep.ee[nxt] - ep.ee[t]).astype(np.float32),
                                "rotation_delta": (ep.rpy[nxt] - ep.rpy[t]).astype(np.float32),
                                "gripper_closedness_action": np.array([rel[t]], np.float32),
                                "base_displacement_vector": np.zeros(2, np.float32),
                                "base_displacement_vertical_rotation": np.zeros(1, np.float32),
                                "terminate_episode": np.array([1, 0, 0] if t == T - 1 else [0, 1, 0], np.int32),
                            },
                            "observation": {
                                "image": io.BytesIO(frames["image"][t]),
                                "natural_language_instruction": ep.instruction,
                                "natural_language_embedding": emb,
                                "base_pose_tool_reached": np.r_[ep.ee[t], quat].astype(np.float32),
                                "gripper_closed": np.array([closed[t]], np.float32),
                                "gripper_closedness_commanded": np.array([closed[nxt]], np.float32),
                                "height_to_bottom": np.array([ep.ee[t, 2]], np.float32),
                                "orientation_start": quat,
                                "src_rotation": quat,
                                "orientation_box": np.zeros((2, 3), np.float32),
                                "robot_orientation_positions_box": np.eye(3, dtype=np.float32),
                                "workspace_bounds": np.array([[0.2, -0.15, 0.0], [0.44, 0.15, 0.2], [0, 0, 0]], np.float32),
                                "rotation_delta_to_go": np.zeros(3, np.float32),
                                "vector_to_go": (goal - ep.ee[t]).astype(np.float32),
                            },
                            "is_first": t == 0,
                            "is_last": t == T - 1,
                            "is_terminal": t == T - 1,
                            "reward": float(t == T - 1),
                        }
                    )
                aspects = {"already_success": False, "feasible": True, "has_aspects": True, "success": True, "undesirable": False}
                attributes = {k: 0 for k in attr_names} | {f"{k}_name": "sample" for k in attr_names}
                yield f"{split}-{i}", {"steps": steps, "aspects": aspects, "attributes": attributes}

    return Fractal20220817Data


def _openx_bridge_builder():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    class Bridge(_sample_builder_base(), skip_registration=True):
        """Open-X copy of Bridge (`bridge` 0.1.0): dict actions, one 480x640 camera, images without an
        encodingFormat in the spec (TFDS then stores PNG), splits train and test, a top-level episode_id."""

        VERSION = tfds.core.Version("0.1.0")

        def _info(self):
            f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)  # noqa: E731
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "episode_id": tfds.features.Tensor(shape=(), dtype=tf.string),
                        "steps": tfds.features.Dataset(
                            {
                                "action": tfds.features.FeaturesDict(
                                    {
                                        "open_gripper": tfds.features.Tensor(shape=(), dtype=np.bool_),
                                        "rotation_delta": f32(3),
                                        "terminate_episode": tfds.features.Tensor(shape=(), dtype=np.float32),
                                        "world_vector": f32(3),
                                    }
                                ),
                                "observation": tfds.features.FeaturesDict(
                                    {
                                        "image": tfds.features.Image(shape=(480, 640, 3), dtype=np.uint8),
                                        "natural_language_instruction": tfds.features.Tensor(shape=(), dtype=tf.string),
                                        "natural_language_embedding": f32(512),
                                        "state": f32(7),
                                    }
                                ),
                                "is_first": tfds.features.Tensor(shape=(), dtype=np.bool_),
                                "is_last": tfds.features.Tensor(shape=(), dtype=np.bool_),
                                "is_terminal": tfds.features.Tensor(shape=(), dtype=np.bool_),
                                "reward": tfds.features.Scalar(dtype=np.float32),
                            }
                        ),
                    }
                ),
            )

        def _generate_examples(self, split):
            from data.scenes import render

            for i, ep in enumerate(self._plans[split]):
                rng = np.random.default_rng(self._seed + i)
                frames = [render(ep, t, "front", 480, 640, rng) for t in range(ep.num_steps)]
                _, record = _episode_frames(ep, {}, (480, 640), self._quality, self._seed + i)
                record["objects"] = [
                    {**o, "boxes": {"image": [object_box(ep, t, j, "front", 480, 640) for t in range(ep.num_steps)]}}
                    for j, o in enumerate(record["objects"])
                ]
                self._scenes[f"{split}/{i}"] = {"split": split, "episode_id": f"sample_{split}_{i}", **record}
                state = np.concatenate([ep.ee, ep.rpy, ep.gripper_open[:, None]], 1).astype(np.float32)
                T, emb = ep.num_steps, _language_embedding(ep.instruction)
                steps = []
                for t in range(T):
                    nxt = min(t + 1, T - 1)
                    steps.append(
                        {
                            "action": {
                                "open_gripper": bool(ep.gripper_open[nxt] > 0.5),
                                "rotation_delta": (ep.rpy[nxt] - ep.rpy[t]).astype(np.float32),
                                "terminate_episode": float(t == T - 1),
                                "world_vector": (ep.ee[nxt] - ep.ee[t]).astype(np.float32),
                            },
                            "observation": {
                                "image": frames[t],  # numpy: TFDS encodes it (PNG, as in the Open-X files)
                                "natural_language_instruction": ep.instruction,
                                "natural_language_embedding": emb,
                                "state": state[t],
                            },
                            "is_first": t == 0,
                            "is_last": t == T - 1,
                            "is_terminal": t == T - 1,
                            "reward": float(t == T - 1),
                        }
                    )
                yield f"{split}-{i}", {"episode_id": f"sample_{split}_{i}", "steps": steps}

    return Bridge
