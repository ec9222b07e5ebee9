"""What teacher tests ask about: a one-step, two-camera episode, and a valid answer to it."""

import io

import numpy as np
from PIL import Image

from data.traces import Trace
from models.teachers.base import EpisodeContext

GOOD = Trace("a robot arm, a red block and a blue plate", "the block must go on the plate", "the block is left of the plate",
             "pick the block and place it", ["Move to the block", "Grasp it", "Place it on the plate"], "Move the arm left.").to_text()


def jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def one_step_episode() -> EpisodeContext:
    images = [[("image_0", "jpeg", jpeg(120)), ("image_1", "jpeg", jpeg(200))]]
    return EpisodeContext("bridge_dataset", "ep0", ["put the red block on the blue plate"], np.zeros((1, 7)), images)
