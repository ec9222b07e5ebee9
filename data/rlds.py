"""Read RLDS datasets in TFDS layout into typed step rows (`data/schema.STEP_SCHEMA`).

We read the files TFDS wrote, never a registered builder (the Open-X ones reach the network): shard
names come from `dataset_info.json`, the feature spec from `features.json`, and records are parsed in
TensorFlow's C++ parser (`tf.io.parse_single_example`), one episode per record, streaming.

Supported flavours (detected from the features, not the folder name):
- `bridge`: BridgeData V2 release (`bridge_dataset` 1.0.0, or the same folder renamed `bridge_orig`).
- `fractal`: RT-1 (`fractal20220817_data` 0.1.0).
Open-X `bridge` 0.1.0 is recognised and refused with a clear message until issue #3 adds it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.actions import binarize_gripper, rel2abs_gripper
from data.images import sniff_image
from data.io import read_json

log = logging.getLogger("refinevla")

# What `action_raw` holds, per flavour, in order.
RAW_ACTION_LAYOUT = {
    "bridge": ["action[0:7]"],
    "fractal": [
        "world_vector[3]",
        "rotation_delta[3]",
        "gripper_closedness_action[1]",
        "base_displacement_vector[2]",
        "base_displacement_vertical_rotation[1]",
        "terminate_episode[3]",
    ],
}


class RldsError(ValueError):
    """Bad input: names the file, the record and what was expected."""


@dataclass(frozen=True)
class Feature:
    kind: str  # tensor | image | text
    dtype: str  # float32, int64, bool, string, uint8 ...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RldsDataset:
    path: Path
    name: str
    version: str
    flavour: str
    features: dict[str, Feature]  # flat keys as on the wire, e.g. "steps/observation/image_0"
    splits: dict[str, list[Path]]  # split -> shard files in order

    @property
    def cameras(self) -> list[str]:
        return [k.rsplit("/", 1)[1] for k, f in self.features.items() if f.kind == "image"]


def open_rlds(path: str | Path) -> RldsDataset:
    """Open `<root>/<name>/<version>` (or `<root>/<name>`, taking its newest version)."""
    path = Path(path)
    if not path.exists():
        raise RldsError(f"{path}: no such directory")
    if not (path / "dataset_info.json").exists():
        versions = sorted((p for p in path.iterdir() if (p / "dataset_info.json").exists()), key=lambda p: _version_key(p.name))
        if not versions:
            raise RldsError(f"{path}: not a TFDS dataset directory (no dataset_info.json here or in a version folder)")
        path = versions[-1]
    info = read_json(path / "dataset_info.json")
    if not (path / "features.json").exists():
        raise RldsError(f"{path}: features.json is missing")
    features = _flatten(read_json(path / "features.json"))
    name = info["name"]  # a renamed folder (bridge_orig) keeps the name TFDS wrote
    splits = {}
    for s in info.get("splits", []):
        n = len(s.get("shardLengths", [])) or 1
        template = s.get("filepathTemplate", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
        files = [
            path / template.replace("{DATASET}", name).replace("{SPLIT}", s["name"])
            .replace("{FILEFORMAT}", info.get("fileFormat", "tfrecord")).replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}")
            for i in range(n)
        ]
        splits[s["name"]] = files
    return RldsDataset(path, name, info.get("version", path.name), _flavour(path, features), features, splits)


def _version_key(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else -1 for x in v.split("."))


def _flatten(spec: dict, prefix: str = "") -> dict[str, Feature]:
    """features.json (TFDS FeaturesDict JSON) → flat wire keys with kind, dtype and per-step shape."""
    out: dict[str, Feature] = {}
    if "featuresDict" in spec:
        for k, v in spec["featuresDict"]["features"].items():
            out.update(_flatten(v, f"{prefix}{k}/"))
    elif "sequence" in spec:  # a tfds Dataset (the steps): its features are per step
        out.update(_flatten(spec["sequence"]["feature"], prefix))
    elif "image" in spec:
        dims = spec["image"].get("shape", {}).get("dimensions", [])
        out[prefix[:-1]] = Feature("image", "uint8", tuple(int(d) for d in dims))
    elif "text" in spec:
        out[prefix[:-1]] = Feature("text", "string", ())
    elif "tensor" in spec:
        dims = spec["tensor"].get("shape", {}).get("dimensions", [])
        out[prefix[:-1]] = Feature("tensor", spec["tensor"]["dtype"], tuple(int(d) for d in dims))
    else:
        raise RldsError(f"features.json: unsupported feature at '{prefix[:-1]}': {sorted(spec)}")
    return out


def _flavour(path: Path, f: dict[str, Feature]) -> str:
    if "steps/language_instruction" in f and f.get("steps/action", Feature("", "", ())).shape == (7,):
        return "bridge"
    if "steps/action/gripper_closedness_action" in f and "steps/observation/natural_language_instruction" in f:
        return "fractal"
    if "steps/action/open_gripper" in f:
        raise RldsError(f"{path}: Open-X 'bridge' 0.1.0 is not supported yet (issue #3); use bridge_dataset/bridge_orig")
    raise RldsError(f"{path}: unknown RLDS flavour; expected bridge_dataset/bridge_orig or fractal20220817_data features")


@dataclass
class ParsedEpisode:
    episode_id: str
    source_file: str
    source_index: int
    source_episode_id: str
    num_steps: int
    instruction: list[str]
    images: dict[str, list[bytes]]  # camera -> encoded bytes per step
    state: np.ndarray  # (T, S)
    action: np.ndarray  # (T, 7) project convention
    action_raw: np.ndarray  # (T, R)
    reward: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray
    is_terminal: np.ndarray


def iter_episodes(ds: RldsDataset, split: str, files: list[Path] | None = None) -> Iterator[ParsedEpisode]:
    """Stream the episodes of `split` (or of the given shard files), one record at a time."""
    if split not in ds.splits:
        raise RldsError(f"{ds.path}: no split '{split}' (has {sorted(ds.splits)})")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    spec = {k: tf.io.VarLenFeature(_tf_dtype(tf, f)) for k, f in ds.features.items()}
    for file in files or ds.splits[split]:
        if not file.exists():
            raise RldsError(f"{file}: shard listed in dataset_info.json is missing")
        records = tf.data.TFRecordDataset([str(file)]).map(
            lambda r: {k: v.values for k, v in tf.io.parse_single_example(r, spec).items()}
        )
        index = -1
        try:
            for index, ex in enumerate(records.as_numpy_iterator()):
                yield _episode(ds, file, index, ex)
        except tf.errors.OpError as e:
            raise RldsError(f"{file}: record {index + 1}: cannot read or parse it as an RLDS episode: {e.message}") from e


def _tf_dtype(tf, f: Feature):
    if f.kind in ("image", "text") or f.dtype == "string":
        return tf.string
    if f.dtype.startswith("float"):
        return tf.float32
    return tf.int64  # TFDS stores bool / int32 / int64 as int64 on the wire


def _episode(ds: RldsDataset, file: Path, index: int, ex: dict[str, np.ndarray]) -> ParsedEpisode:
    where = f"{file}: record {index}"
    if "steps/is_first" not in ex:
        raise RldsError(f"{where}: no steps/is_first; not an RLDS episode")
    n = len(ex["steps/is_first"])
    if n == 0:
        raise RldsError(f"{where}: episode has no steps")

    def steps(key: str) -> np.ndarray:
        f = ds.features[key]
        v = ex[key]
        size = int(np.prod(f.shape)) if f.kind == "tensor" and f.shape else 1
        if v.shape[0] != n * size:
            raise RldsError(f"{where}: '{key}' has {v.shape[0]} values, expected {n} steps x {f.shape or '()'}")
        return v.reshape(n, *f.shape) if f.kind == "tensor" else v

    def text(key: str) -> list[str]:
        return [b.decode("utf-8") for b in steps(key)]

    images = {k.rsplit("/", 1)[1]: list(steps(k)) for k, f in ds.features.items() if f.kind == "image"}
    if ds.flavour == "bridge":
        raw = steps("steps/action").astype(np.float32)
        action = raw.copy()
        action[:, 6] = binarize_gripper(raw[:, 6])
        instruction = text("steps/language_instruction")
        state = steps("steps/observation/state").astype(np.float32)
        meta_path = ex.get("episode_metadata/file_path")
        meta_id = ex.get("episode_metadata/episode_id")
        own_id = f"{meta_path[0].decode()}#{int(meta_id[0])}" if meta_path is not None and len(meta_path) and meta_id is not None and len(meta_id) else ""
    else:  # fractal
        parts = [steps(f"steps/action/{k.split('[')[0]}").reshape(n, -1).astype(np.float32) for k in RAW_ACTION_LAYOUT["fractal"]]
        raw = np.concatenate(parts, axis=1)
        action = np.concatenate([parts[0], parts[1], rel2abs_gripper(parts[2][:, 0])[:, None]], axis=1)
        instruction = text("steps/observation/natural_language_instruction")
        state = np.concatenate(
            [steps("steps/observation/base_pose_tool_reached"), steps("steps/observation/gripper_closed")], axis=1
        ).astype(np.float32)
        own_id = ""
    return ParsedEpisode(
        episode_id=f"{file.name}_{index:06d}",
        source_file=file.name,
        source_index=index,
        source_episode_id=own_id,
        num_steps=n,
        instruction=instruction,
        images=images,
        state=state,
        action=action.astype(np.float32),
        action_raw=raw,
        reward=steps("steps/reward").astype(np.float32) if "steps/reward" in ds.features else np.zeros(n, np.float32),
        is_first=steps("steps/is_first").astype(bool),
        is_last=steps("steps/is_last").astype(bool),
        is_terminal=steps("steps/is_terminal").astype(bool),
    )


def episode_rows(ds: RldsDataset, split: str, ep: ParsedEpisode) -> list[dict]:
    """One `STEP_SCHEMA` row per step."""
    cams = sorted(ep.images)
    return [
        {
            "dataset": ds.name,
            "dataset_version": ds.version,
            "split": split,
            "episode_id": ep.episode_id,
            "step_index": t,
            "num_steps": ep.num_steps,
            "is_first": bool(ep.is_first[t]),
            "is_last": bool(ep.is_last[t]),
            "is_terminal": bool(ep.is_terminal[t]),
            "instruction": ep.instruction[t],
            "images": [{"camera": c, "encoding": sniff_image(ep.images[c][t]), "data": ep.images[c][t]} for c in cams],
            "state": ep.state[t].tolist(),
            "action": ep.action[t].tolist(),
            "action_raw": ep.action_raw[t].tolist(),
            "reward": float(ep.reward[t]),
            "source_file": ep.source_file,
            "source_index": ep.source_index,
            "source_episode_id": ep.source_episode_id,
        }
        for t in range(ep.num_steps)
    ]
