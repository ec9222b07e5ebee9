"""The teacher prompt of the paper (Appendix A.1), versioned, in two answer formats.

`tagged` asks for the paper's tagged text; `json` asks for the same four parts as a JSON object and sends
`TraceAnswer` as the response schema (structured output). The version names the exact text; it is part
of every trace's folder and row, so traces asked with different prompts never mix. Change the text →
bump the version.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

AnswerFormat = Literal["tagged", "json"]
PROMPT_VERSIONS: dict[str, str] = {"tagged": "a1-v1", "json": "a1-json-v1"}
PROMPT_VERSION = PROMPT_VERSIONS["tagged"]

_QUESTIONS = """You are a robot. Given the images from different angles and instructions, observe the scene and reason step-by-step about what you see, what each object is, and what actions might be possible.
Instruction: {instruction} Now think carefully and describe:
#1 <Observation>: What do you see in the image?
#2 <Situation Analysis>: What is happening in the scene, and what is the task?
#3 <Spatial Reasoning>: How are the objects arranged, and what spatial relationships matter for completing the task?
#4 <Task Planning>: What are the logical steps to achieve the task, and what should be the robot's next action?
"""
_ANSWER = {
    "tagged": "Answer with the four tagged sections in this order. Inside <Task Planning>, give the steps as <logical_steps> "
    "<1> ... <2> ... and end with <sub_action> followed by the robot's next action.",
    "json": "Answer as a JSON object with the fields observation (#1), situation_analysis (#2), spatial_reasoning (#3), "
    "task_planning (#4, a one-sentence plan), logical_steps (the plan's steps, a list of strings) and sub_action "
    "(the robot's next action).",
}


class TraceAnswer(BaseModel):
    """The response schema of the `json` format (structured output); the fields of `data.traces.Trace`."""

    observation: str = Field(description="What the robot sees in the images.")
    situation_analysis: str = Field(description="What is happening in the scene, and what the task is.")
    spatial_reasoning: str = Field(description="How the objects are arranged and which relations matter.")
    task_planning: str = Field(description="The plan in one sentence.")
    logical_steps: list[str] = Field(description="The plan's steps, in order.")
    sub_action: str = Field(description="The robot's next action.")


def render_prompt(instruction: str, answer_format: AnswerFormat = "tagged") -> str:
    return _QUESTIONS.format(instruction=instruction.strip() or "(no instruction given)") + _ANSWER[answer_format]
