"""Arrow schemas of the two Parquet products: parsed steps, and steps enriched with reasoning traces.

This module is the one place the columns are documented: every field carries its description in its
Arrow metadata (`description`), so the files themselves say what each column means
(`pq.read_schema(f).field("action").metadata`), and the dataset card renders the same text (`schema_table`).

One row per step. Ids: (`dataset`, `split`, `episode_id`, `step_index`) is unique and stable across
re-runs and re-sharding: `episode_id` is `<split>-<16 hex>`, a hash of the dataset's own episode id
(Bridge: episode_metadata file_path + episode_id; Open-X: episode_id) or, where the data has none
(Fractal), of the episode's content. `source_file` / `source_index` say where the record was read.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "2"


def _field(name: str, type_: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"description": description})


IMAGE = pa.struct([("camera", pa.string()), ("encoding", pa.string()), ("dummy", pa.bool_()), ("data", pa.binary())])

STEP_FIELDS = [
    _field("dataset", pa.string(), "TFDS name of the source, e.g. bridge_dataset, fractal20220817_data.", False),
    _field("dataset_version", pa.string(), "TFDS version of the source, e.g. 1.0.0.", False),
    _field("split", pa.string(), "The source split (train / val / test).", False),
    _field("episode_id", pa.string(), "Stable episode id `<split>-<16 hex>` (hash of the dataset's own id, else of the content).", False),
    _field("step_index", pa.int32(), "Step number inside the episode, from 0.", False),
    _field("num_steps", pa.int32(), "Steps in the episode.", False),
    _field("is_first", pa.bool_(), "RLDS is_first."),
    _field("is_last", pa.bool_(), "RLDS is_last."),
    _field("is_terminal", pa.bool_(), "RLDS is_terminal."),
    _field("instruction", pa.string(), "Language instruction (empty when the episode was recorded without one)."),
    _field("images", pa.list_(IMAGE), "Every camera view: camera name, sniffed encoding (jpeg/png), dummy (an all-zero placeholder "
           "for a camera not recorded), and the encoded bytes exactly as stored in the source (no re-encoding)."),
    _field("state", pa.list_(pa.float32()), "Proprioception. Bridge: xyz, rpy, gripper (1 = open); Fractal: xyz, quaternion (xyzw), gripper_closed."),
    _field("action", pa.list_(pa.float32(), 7), "7-D action in the project convention (data/actions.py): xyz and rpy deltas as "
           "recorded, absolute gripper with 1 = open."),
    _field("action_raw", pa.list_(pa.float32()), "The action as recorded; layout per flavour in data/rlds.RAW_ACTION_LAYOUT."),
    _field("reward", pa.float32(), "RLDS reward."),
    _field("source_file", pa.string(), "TFRecord shard the step was read from."),
    _field("source_index", pa.int32(), "Record index of the episode inside source_file."),
    _field("source_episode_id", pa.string(), "The dataset's own episode id where it has one (empty otherwise)."),
]
STEP_SCHEMA = pa.schema(STEP_FIELDS)

TRACE_COLUMNS = [
    _field("trace_status", pa.string(), "ok | failed (teacher answers were malformed; see trace_error) | missing (not annotated) | "
           "stale (asked about other data). Every step is kept; train on ok.", False),
    _field("trace_error", pa.string(), "Why the trace is not ok."),
    _field("observation", pa.string(), "<Observation>: what the teacher sees."),
    _field("situation_analysis", pa.string(), "<Situation Analysis>: what is happening and what the task is."),
    _field("spatial_reasoning", pa.string(), "<Spatial Reasoning>: object arrangement and relations that matter."),
    _field("task_planning", pa.string(), "<Task Planning>: the plan in one sentence."),
    _field("logical_steps", pa.list_(pa.string()), "<logical_steps>: the plan's steps in order."),
    _field("sub_action", pa.string(), "<sub_action>: the robot's next action in words."),
    _field("reasoning_text", pa.string(), "The whole trace rendered in the tagged format: the student's reasoning target."),
    _field("teacher", pa.string(), "Teacher name (offline, a Gemini model id, local_<dir>)."),
    _field("teacher_model", pa.string(), "Model behind the teacher."),
    _field("prompt_version", pa.string(), "Version of the prompt text the trace was asked with (models/teachers/prompt.py)."),
    _field("trace_derived_from", pa.int32(), "Keyframe mode: the step whose answer this trace reuses, with its own sub_action from "
           "the recorded motion (null: the teacher was asked about this step)."),
]
REASONING_SCHEMA = pa.schema(
    [*STEP_FIELDS, _field("unnorm_key", pa.string(), "Key of this dataset's action statistics in stats.json (SpatialVLA's unnorm_key).", False),
     *TRACE_COLUMNS],
    metadata={"refinevla.schema_version": SCHEMA_VERSION},
)


def schema_table(schema: pa.Schema) -> str:
    """The schema as a Markdown table (for dataset cards)."""
    rows = ["| column | type | description |", "|---|---|---|"]
    for f in schema:
        rows.append(f"| `{f.name}` | `{f.type}` | {(f.metadata or {}).get(b'description', b'').decode()} |")
    return "\n".join(rows)
