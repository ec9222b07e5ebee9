"""The offline teacher: a trace from what the data itself records, with no model and no network.

What it knows: the instruction, the step index and episode length, the gripper command of every step
(absolute, 1 = open) and the end-effector motion (the action deltas). From these it finds the phase of
the step (approach, grasp, transport/lift, release, retreat), the direction of motion, and a plan from
the instruction's verb and objects.

What it cannot know: anything only the images show. It does not see object colours beyond the words of
the instruction, distractors, positions in the image, clutter, failures or occlusions. Its
<Observation> and <Spatial Reasoning> are therefore statements about the instruction and the robot's
own motion, not about the scene. It makes the pipeline run end to end offline and gives the student a
consistent, action-aligned reasoning target; it is not a substitute for a vision-language teacher.
"""

from __future__ import annotations

import re

import numpy as np

from data.traces import Trace, TraceRecord
from models.teachers.base import EpisodeContext

PROMPT_VERSION = "offline-v1"

_PATTERNS = [  # (regex, verb) over the lower-cased instruction
    (re.compile(r"^(?:put|place|move|set)\s+(?:the\s+)?(.+?)\s+(?:on|onto|in|into|inside|on top of)\s+(?:the\s+)?(.+)$"), "put"),
    (re.compile(r"^(?:move|bring|push)\s+(?:the\s+)?(.+?)\s+(?:near|next to|close to|beside|towards?)\s+(?:the\s+)?(.+)$"), "near"),
    (re.compile(r"^(?:pick\s+up|pick|grab|lift|take)\s+(?:up\s+)?(?:the\s+)?(.+?)$"), "pick"),
    (re.compile(r"^(open|close)\s+(?:the\s+)?(.+)$"), "articulate"),
]


def parse_instruction(instruction: str) -> tuple[str, str, str | None]:
    """(verb, object, target) from an instruction such as 'put the red block on the blue plate'."""
    text = instruction.lower().strip().rstrip(".")
    for rx, verb in _PATTERNS:
        m = rx.match(text)
        if m:
            if verb == "articulate":
                return m.group(1), m.group(2), None
            return verb, m.group(1).strip(), (m.group(2).strip() if m.lastindex and m.lastindex > 1 else None)
    return "do", text or "the task", None


def _phases(actions: np.ndarray) -> list[str]:
    """Phase per step from the absolute gripper command (1 open, 0 closed).

    An all-zero last action (how BridgeData V2 ends every episode) is the "done" phase.
    """
    g = (np.asarray(actions[:, 6]) > 0.5).astype(int)
    out, held, released = [], False, False
    for t, v in enumerate(g):
        prev = g[t - 1] if t else 1
        if t == len(g) - 1 and t > 0 and not np.any(actions[t]):
            out.append("done")
        elif prev == 1 and v == 0:
            out.append("grasp")
            held = True
        elif prev == 0 and v == 1:
            out.append("release")
            held, released = False, True
        elif held:
            out.append("carry")
        else:
            out.append("retreat" if released else "approach")
    return out


def _direction(delta: np.ndarray, scale: float) -> str:
    words = []
    for value, pos, neg in zip(delta[:3], ("forward", "left", "up"), ("backward", "right", "down")):
        if abs(value) > 0.3 * scale:
            words.append(pos if value > 0 else neg)
    return " and ".join(words)  # "" when the arm is (almost) still


def sub_action_from_motion(episode: EpisodeContext, step: int) -> str:
    """The next action of `step` in words, from the recorded gripper command and motion alone (used by
    the keyframe annotation mode for the steps between teacher calls)."""
    actions = np.asarray(episode.actions, dtype=np.float32)
    _, obj, target = parse_instruction(episode.instructions[step]) if episode.instructions[step].strip() else ("", "object", None)
    scale = float(np.max(np.linalg.norm(actions[:, :3], axis=1))) or 1.0
    phase, motion = _phases(actions)[step], _direction(actions[step, :3], scale)
    return {
        "approach": f"Move the arm {motion} toward the {obj}." if motion else f"Line the gripper up with the {obj}.",
        "grasp": f"Close the gripper on the {obj}.",
        "carry": f"Carry the {obj} {motion + ' ' if motion else ''}toward {'the ' + target if target else 'a lifted position'}.",
        "release": f"Open the gripper to release the {obj}" + (f" at the {target}." if target else "."),
        "retreat": f"Move the arm {motion}, away from the {target or obj}." if motion else "Hold the arm still.",
        "done": "Stop; the task is complete.",
    }[phase]


class OfflineTeacher:
    name = "offline"
    model = "rule-based"
    prompt_version = PROMPT_VERSION
    needs_images = False

    def annotate_step(self, episode: EpisodeContext, step: int) -> TraceRecord:
        trace = self.trace(episode, step)
        return TraceRecord(step=step, status="ok", teacher=self.name, model=self.model, prompt_version=self.prompt_version,
                           trace=trace.to_dict(), raw_text=trace.to_text())

    def trace(self, episode: EpisodeContext, step: int) -> Trace:
        instruction = episode.instructions[step]
        verb, obj, target = parse_instruction(instruction)
        unlabelled = not instruction.strip()  # recorded without language: only the motion speaks
        if unlabelled:
            verb, obj, target = "unlabelled", "object", None
        actions = np.asarray(episode.actions, dtype=np.float32)
        T = len(actions)
        phases = _phases(actions)
        phase = phases[step]
        scale = float(np.max(np.linalg.norm(actions[:, :3], axis=1))) or 1.0
        motion = _direction(actions[step, :3], scale)
        holding = phase in ("grasp", "carry")
        goal = target if (holding and target) else obj
        if verb == "pick" and holding:
            goal = "a lifted position"

        steps = [f"Locate the {obj}", f"Move the gripper to the {obj}", f"Grasp the {obj}"]
        if verb == "put":
            steps += [f"Lift the {obj}", f"Move the {obj} to the {target}", f"Place the {obj} on the {target}", f"Release the {obj}"]
        elif verb == "near":
            steps += [f"Lift the {obj}", f"Move the {obj} next to the {target}", f"Release the {obj}"]
        elif verb == "pick":
            steps += [f"Lift the {obj}", f"Hold the {obj} above the table"]
        elif verb in ("open", "close"):
            steps = [f"Locate the {obj} handle", "Move the gripper to the handle", "Grasp the handle",
                     f"{'Pull' if verb == 'open' else 'Push'} the {obj}", "Release the handle"]
        else:
            steps = [f"Identify what '{instruction}' requires", "Move the gripper accordingly", "Check the result"]

        moving = f"moving {motion}" if motion else "almost still"
        sub_action = sub_action_from_motion(episode, step)
        if unlabelled:
            steps = ["Move the gripper to the object", "Grasp the object", "Move it where the motion leads", "Release it"]
        task = "an unlabelled manipulation task (no instruction was recorded)" if unlabelled else instruction.strip().rstrip(".")
        mentioned = "no objects (no instruction was recorded)" if unlabelled else f"the {obj}" + (f" and the {target}" if target else "")
        return Trace(
            observation=(
                f"The instruction mentions {mentioned}. The gripper is {'closed' if holding else 'open'}"
                f"{' and holds the ' + obj if holding and phase != 'grasp' else ''}."
            ),
            situation_analysis=(
                f"The task is {'' if unlabelled else 'to '}{task}. This is step {step + 1} of {T}; "
                f"the robot is in the {phase} phase."
            ),
            spatial_reasoning=(
                f"The end effector is {moving}"
                f"{', toward the ' + goal if motion and goal != 'a lifted position' and phase in ('approach', 'carry') else ''}. "
                f"{'The ' + obj + ' must end up at the ' + target + '.' if target else 'The ' + obj + ' must be lifted from the table.'}"
            ),
            task_planning="The robot follows its recorded motion" if unlabelled else f"The robot needs to {task.lower()}",
            logical_steps=steps,
            sub_action=sub_action,
        )
