"""The teacher prompt of the paper (Appendix A.1), versioned.

The version names the exact text; it is part of every trace's path and row, so a changed prompt never
mixes with traces asked with the old one. Change the text → bump the version.
"""

from __future__ import annotations

PROMPT_VERSION = "a1-v1"

_TEMPLATE = """You are a robot. Given the images from different angles and instructions, observe the scene and reason step-by-step about what you see, what each object is, and what actions might be possible.
Instruction: {instruction} Now think carefully and describe:
#1 <Observation>: What do you see in the image?
#2 <Situation Analysis>: What is happening in the scene, and what is the task?
#3 <Spatial Reasoning>: How are the objects arranged, and what spatial relationships matter for completing the task?
#4 <Task Planning>: What are the logical steps to achieve the task, and what should be the robot's next action?
Answer with the four tagged sections in this order. Inside <Task Planning>, give the steps as <logical_steps> <1> ... <2> ... and end with <sub_action> followed by the robot's next action."""


def render_prompt(instruction: str) -> str:
    return _TEMPLATE.format(instruction=instruction.strip() or "(no instruction given)")
