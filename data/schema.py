"""Arrow schemas of the two Parquet products: parsed steps, and steps enriched with reasoning traces.

One row per step. Ids: (`dataset`, `split`, `episode_id`, `step_index`) is unique and stable across
re-runs and re-sharding: `episode_id` is `<split>-<16 hex>`, a hash of the dataset's own episode id
(Bridge: episode_metadata file_path + episode_id; Open-X: episode_id) or, where the data has none
(Fractal), of the episode's content. `source_file` / `source_index` say where the record was read.
"""

from __future__ import annotations

import pyarrow as pa

# One camera view of a step: its name, sniffed encoding (jpeg / png), whether the camera is an all-zero
# placeholder (not recorded in this episode), and the encoded bytes exactly as stored in the source.
IMAGE = pa.struct([("camera", pa.string()), ("encoding", pa.string()), ("dummy", pa.bool_()), ("data", pa.binary())])

STEP_FIELDS = [
    pa.field("dataset", pa.string(), nullable=False),  # TFDS name, e.g. bridge_dataset
    pa.field("dataset_version", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),  # the source split (train / val / test)
    pa.field("episode_id", pa.string(), nullable=False),
    pa.field("step_index", pa.int32(), nullable=False),
    pa.field("num_steps", pa.int32(), nullable=False),
    pa.field("is_first", pa.bool_()),
    pa.field("is_last", pa.bool_()),
    pa.field("is_terminal", pa.bool_()),
    pa.field("instruction", pa.string()),
    pa.field("images", pa.list_(IMAGE)),  # every camera view, encoded bytes as stored (no re-encoding)
    pa.field("state", pa.list_(pa.float32())),  # bridge: xyz rpy gripper(1=open); fractal: xyz quat(xyzw) gripper_closed
    pa.field("action", pa.list_(pa.float32(), 7)),  # data/actions.py convention: deltas + absolute gripper 1=open
    pa.field("action_raw", pa.list_(pa.float32())),  # as recorded; layout per flavour in data/rlds.RAW_ACTION_LAYOUT
    pa.field("reward", pa.float32()),
    pa.field("source_file", pa.string()),
    pa.field("source_index", pa.int32()),  # record index inside source_file
    pa.field("source_episode_id", pa.string()),  # the dataset's own id where it has one ("" otherwise)
]
STEP_SCHEMA = pa.schema(STEP_FIELDS)

TRACE_COLUMNS = [
    pa.field("trace_status", pa.string(), nullable=False),  # ok | failed | missing | stale
    pa.field("trace_error", pa.string()),
    pa.field("observation", pa.string()),
    pa.field("situation_analysis", pa.string()),
    pa.field("spatial_reasoning", pa.string()),
    pa.field("task_planning", pa.string()),
    pa.field("logical_steps", pa.list_(pa.string())),
    pa.field("sub_action", pa.string()),
    pa.field("reasoning_text", pa.string()),  # the rendered trace, the student's reasoning target
    pa.field("teacher", pa.string()),
    pa.field("teacher_model", pa.string()),
    pa.field("prompt_version", pa.string()),
    pa.field("trace_derived_from", pa.int32()),  # keyframe mode: the step whose answer this trace reuses (null: asked)
]
REASONING_SCHEMA = pa.schema([*STEP_FIELDS, pa.field("unnorm_key", pa.string(), nullable=False), *TRACE_COLUMNS])
