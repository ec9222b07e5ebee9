"""Read RLDS datasets in TFDS layout into typed step rows (`data/schema.STEP_SCHEMA`).

We read the files TFDS wrote, never a registered builder (the Open-X ones reach the network): shard
names come from `dataset_info.json`, the feature spec from `features.json`. Records (one per episode)
are framed and CRC-checked by `data/tfrecord.py` and parsed by TensorFlow's C++ `parse_single_example`;
a shard streams one episode at a time, so memory does not grow with the dataset.

Flavours, detected from the features (never the folder name):

| flavour | dataset | language | action → [dxyz, drpy, gripper 1=open] |
|---|---|---|---|
| `bridge` | `bridge_dataset` 1.0.0, also renamed `bridge_orig` | steps/language_instruction | action[:6], binarised action[6] |
| `fractal` | `fractal20220817_data` 0.1.0 | steps/observation/natural_language_instruction | world_vector, rotation_delta, rel→abs gripper |
| `bridge_oxe` | Open-X `bridge` 0.1.0 | steps/observation/natural_language_instruction | world_vector, rotation_delta, float(open_gripper) |

Bad input raises `RldsError` naming the file, the record and what was expected; with `on_error="skip"`
the broken episode goes to the `ParseReport` and every other episode is read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from data.actions import binarize_gripper, rel2abs_gripper
from data.images import is_blank, sniff_image
from data.io import read_json
from data.tfrecord import RecordError, read_records

log = logging.getLogger("refinevla")

# What `action_raw` holds, per flavour, in order.
RAW_ACTION_LAYOUT = {
    "bridge": ["action[7]"],
    "fractal": ["world_vector[3]", "rotation_delta[3]", "gripper_closedness_action[1]", "base_displacement_vector[2]",
                "base_displacement_vertical_rotation[1]", "terminate_episode[3]"],
    "bridge_oxe": ["world_vector[3]", "rotation_delta[3]", "open_gripper[1]", "terminate_episode[1]"],
}
# Step features each flavour needs; checked against features.json when the dataset is opened.
REQUIRED = {
    "bridge": ["steps/action", "steps/language_instruction", "steps/observation/state", "steps/is_first"],
    "fractal": [f"steps/action/{k.split('[')[0]}" for k in RAW_ACTION_LAYOUT["fractal"]]
    + ["steps/observation/natural_language_instruction", "steps/observation/base_pose_tool_reached", "steps/observation/gripper_closed", "steps/is_first"],
    "bridge_oxe": [f"steps/action/{k.split('[')[0]}" for k in RAW_ACTION_LAYOUT["bridge_oxe"]]
    + ["steps/observation/natural_language_instruction", "steps/observation/state", "steps/is_first"],
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
        return sorted(k.rsplit("/", 1)[1] for k, f in self.features.items() if f.kind == "image")


def open_rlds(path: str | Path) -> RldsDataset:
    """Open `<root>/<name>/<version>` (or `<root>/<name>`, taking its newest version)."""
    path = Path(path)
    if not path.is_dir():
        raise RldsError(f"{path}: no such directory")
    if not (path / "dataset_info.json").exists():
        versions = sorted((p for p in path.iterdir() if (p / "dataset_info.json").exists()), key=lambda p: _version_key(p.name))
        if not versions:
            what = "is empty" if not any(path.iterdir()) else "has no dataset_info.json (here or in a version folder)"
            raise RldsError(f"{path}: not a TFDS dataset directory: it {what}")
        path = versions[-1]
    try:
        info = read_json(path / "dataset_info.json")
        name = info["name"]  # a renamed folder (bridge_orig) keeps the name TFDS wrote
    except (ValueError, KeyError) as e:
        raise RldsError(f"{path / 'dataset_info.json'}: not a TFDS dataset_info.json ({e})") from e
    if not (path / "features.json").exists():
        raise RldsError(f"{path}: features.json is missing")
    features = _flatten(read_json(path / "features.json"))
    flavour = _flavour(path, features)
    missing = [k for k in REQUIRED[flavour] if k not in features]
    if missing:
        raise RldsError(f"{path / 'features.json'}: a {flavour} dataset needs {missing}")
    splits = {}
    for s in info.get("splits", []):
        n = len(s.get("shardLengths", [])) or 1
        template = s.get("filepathTemplate", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
        splits[s["name"]] = [
            path / template.replace("{DATASET}", name).replace("{SPLIT}", s["name"])
            .replace("{FILEFORMAT}", info.get("fileFormat", "tfrecord")).replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}")
            for i in range(n)
        ]
    return RldsDataset(path, name, info.get("version", path.name), flavour, features, splits)


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
    if "steps/action/gripper_closedness_action" in f:
        return "fractal"
    if "steps/action/open_gripper" in f:
        return "bridge_oxe"
    raise RldsError(f"{path}: unknown RLDS flavour; expected the features of bridge_dataset/bridge_orig, fractal20220817_data or Open-X bridge")


# ---------------------------------------------------------------------------------------------------- episodes
@dataclass
class ParsedEpisode:
    episode_id: str  # stable: from the dataset's own id, else from the episode's content
    source_file: str
    source_index: int
    source_episode_id: str
    num_steps: int
    instruction: list[str]
    images: dict[str, list[bytes]]  # camera -> encoded bytes per step
    encodings: dict[str, str]  # camera -> jpeg / png (sniffed)
    dummy: dict[str, bool]  # camera -> all-zero placeholder (not recorded)
    state: np.ndarray  # (T, S)
    action: np.ndarray  # (T, 7) project convention
    action_raw: np.ndarray  # (T, R)
    reward: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray
    is_terminal: np.ndarray


@dataclass
class ParseReport:
    """What a parse met besides good episodes: broken ones (skip mode) and unlabelled ones."""

    broken: list[dict] = field(default_factory=list)  # {"file", "record", "error"}
    unlabelled: int = 0  # episodes with an empty instruction (kept or skipped per setting)


OnError = Literal["raise", "skip"]
OnEmpty = Literal["keep", "skip", "error"]


def iter_episodes(ds: RldsDataset, split: str, files: list[Path] | None = None, on_error: OnError = "raise",
                  empty_instruction: OnEmpty = "keep", report: ParseReport | None = None) -> Iterator[ParsedEpisode]:
    """Stream the episodes of `split` (or of the given shard files), one record at a time."""
    if split not in ds.splits:
        raise RldsError(f"{ds.path}: no split '{split}' (has {sorted(ds.splits)})")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    report = report if report is not None else ParseReport()
    spec = {k: tf.io.VarLenFeature(_tf_dtype(tf, f)) for k, f in ds.features.items()}

    def fail(err: RldsError, file: Path, index: int) -> None:
        if on_error == "raise":
            raise err
        report.broken.append({"file": str(file), "record": index, "error": str(err)})
        log.warning("skipped: %s", err)

    for file in files or ds.splits[split]:
        if not file.exists():
            fail(RldsError(f"{file}: shard listed in dataset_info.json is missing"), file, -1)
            continue
        for index, record in read_records(file):
            if isinstance(record, RecordError):
                fail(RldsError(f"{file}: record {index} (byte {record.offset}): {record.reason}"), file, index)
                if record.fatal:
                    break
                continue
            try:
                parsed = tf.io.parse_single_example(record, spec)
                ep = _episode(ds, split, file, index, {k: v.values.numpy() for k, v in parsed.items()})
            except tf.errors.OpError as e:
                fail(RldsError(f"{file}: record {index}: not a tf.train.Example matching features.json: {e.message}"), file, index)
                continue
            except RldsError as e:
                fail(e, file, index)
                continue
            if not any(ep.instruction):
                report.unlabelled += 1
                if empty_instruction == "error":
                    raise RldsError(f"{file}: record {index}: episode has no instruction (set empty_instruction to keep or skip)")
                if empty_instruction == "skip":
                    continue
            yield ep


def _tf_dtype(tf, f: Feature):
    if f.kind in ("image", "text") or f.dtype == "string":
        return tf.string
    if f.dtype.startswith("float"):
        return tf.float32
    return tf.int64  # TFDS stores bool / int32 / int64 as int64 on the wire


def _episode(ds: RldsDataset, split: str, file: Path, index: int, ex: dict[str, np.ndarray]) -> ParsedEpisode:
    where = f"{file}: record {index}"
    step_keys = [k for k in ds.features if k.startswith("steps/")]
    if not any(len(ex[k]) for k in step_keys):
        raise RldsError(f"{where}: holds none of the step features of {ds.name}: not an RLDS episode of this dataset")
    n = len(ex["steps/is_first"])
    if n == 0:
        raise RldsError(f"{where}: 'steps/is_first' is missing or empty; cannot tell the number of steps")

    def steps(key: str) -> np.ndarray:
        f = ds.features[key]
        v = ex[key]
        size = int(np.prod(f.shape)) if f.kind == "tensor" and f.shape else 1
        if v.shape[0] != n * size:
            what = "is missing" if v.shape[0] == 0 else f"has {v.shape[0]} values"
            raise RldsError(f"{where}: '{key}' {what}, expected {n} steps x {f.shape or '()'} {f.dtype}")
        return v.reshape(n, *f.shape) if f.kind == "tensor" else v

    def text(key: str) -> list[str]:
        return [b.decode("utf-8", errors="replace") for b in steps(key)]

    images, encodings, dummy = {}, {}, {}
    for key, f in ds.features.items():
        if f.kind != "image":
            continue
        cam = key.rsplit("/", 1)[1]
        frames = list(steps(key))
        kinds = {sniff_image(b) for b in frames}
        if "unknown" in kinds or len(kinds) > 1:
            bad = next(t for t, b in enumerate(frames) if sniff_image(b) == "unknown") if "unknown" in kinds else 0
            raise RldsError(f"{where}: camera '{cam}' step {bad}: image bytes are not JPEG or PNG (starts with {frames[bad][:8]!r})")
        images[cam], encodings[cam] = frames, kinds.pop()
        try:  # decoding a few frames both checks the bytes and finds all-zero placeholder cameras
            dummy[cam] = all(is_blank(frames[t]) for t in sorted({0, n // 2, n - 1}))
        except Exception as e:
            raise RldsError(f"{where}: camera '{cam}': unreadable image ({type(e).__name__}: {e})") from e

    own_id = ""
    if ds.flavour == "bridge":
        raw = steps("steps/action").astype(np.float32)
        action = raw.copy()
        action[:, 6] = binarize_gripper(raw[:, 6])
        instruction = text("steps/language_instruction")
        state = steps("steps/observation/state").astype(np.float32)
        path, num = ex.get("episode_metadata/file_path", []), ex.get("episode_metadata/episode_id", [])
        if len(path) and len(num):
            own_id = f"{path[0].decode()}#{int(num[0])}"
    else:
        parts = [steps(f"steps/action/{k.split('[')[0]}").reshape(n, -1).astype(np.float32) for k in RAW_ACTION_LAYOUT[ds.flavour]]
        raw = np.concatenate(parts, axis=1)
        gripper = rel2abs_gripper(parts[2][:, 0]) if ds.flavour == "fractal" else parts[2][:, 0]
        action = np.concatenate([parts[0], parts[1], gripper[:, None]], axis=1)
        instruction = text("steps/observation/natural_language_instruction")
        if ds.flavour == "fractal":
            state = np.concatenate([steps("steps/observation/base_pose_tool_reached"), steps("steps/observation/gripper_closed")], axis=1)
        else:
            state = steps("steps/observation/state")
        if len(ex.get("episode_id", [])):
            own_id = ex["episode_id"][0].decode()
    if not own_id:  # no id in the data (fractal): the episode's content identifies it, whatever the sharding
        primary = images[min(images)][0] if images else b""
        own_content = hashlib.sha1(primary + instruction[0].encode() + raw.tobytes()).hexdigest()
    else:
        own_content = own_id
    return ParsedEpisode(
        episode_id=f"{split}-{hashlib.sha1(f'{ds.name}/{split}/{own_content}'.encode()).hexdigest()[:16]}",
        source_file=file.name,
        source_index=index,
        source_episode_id=own_id,
        num_steps=n,
        instruction=instruction,
        images=images,
        encodings=encodings,
        dummy=dummy,
        state=np.asarray(state, np.float32),
        action=action.astype(np.float32),
        action_raw=raw,
        reward=steps("steps/reward").astype(np.float32) if "steps/reward" in ds.features else np.zeros(n, np.float32),
        is_first=steps("steps/is_first").astype(bool),
        is_last=steps("steps/is_last").astype(bool) if "steps/is_last" in ds.features else np.arange(n) == n - 1,
        is_terminal=steps("steps/is_terminal").astype(bool) if "steps/is_terminal" in ds.features else np.arange(n) == n - 1,
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
            "images": [{"camera": c, "encoding": ep.encodings[c], "dummy": ep.dummy[c], "data": ep.images[c][t]} for c in cams],
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
