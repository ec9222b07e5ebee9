"""A vision-language model on this machine as the teacher, through transformers (no network, no API key).

The model directory is whatever `save_pretrained` writes for an image-text-to-text model (LLaVA,
Qwen2-VL, Gemma 3, ...): it is loaded with `local_files_only`, so a wrong path is an error, never a
download, and `trust_remote_code` stays off (only architectures transformers ships will load).

Per step it asks the same as the Gemini teacher: every camera view it is given, then the paper's prompt
with the instruction, in the model's own chat template. The answer is parsed by `data.traces`; a
malformed one is asked again up to `max_reasks` times and then recorded as failed with the reason. The
first answer uses `temperature` (0: greedy); a re-ask samples at `REASK_TEMPERATURE` or more, since a
greedy re-ask would only repeat the same answer.

One model serves every thread of the annotate stage: generation runs under a lock.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from pathlib import Path

from PIL import Image

from data.images import MIME
from data.traces import TraceFormatError, TraceRecord, parse_tagged_text
from models.teachers.base import EpisodeContext, TeacherConfigError
from models.teachers.prompt import PROMPT_VERSION, render_prompt

log = logging.getLogger("refinevla")
REASK_TEMPERATURE = 0.7
DTYPES = ("auto", "float32", "bfloat16", "float16")


class LocalVLMTeacher:
    needs_images = True
    prompt_version = PROMPT_VERSION

    def __init__(
        self,
        path: str,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        max_reasks: int = 2,
        device: str = "auto",
        dtype: str = "auto",
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        root = Path(path).expanduser()
        if not root.is_dir():
            raise TeacherConfigError(f"local teacher model directory '{path}' does not exist (it is never downloaded: "
                                     "save the model there with save_pretrained, or fix the teacher's path setting)")
        if dtype not in DTYPES:
            raise TeacherConfigError(f"local teacher dtype '{dtype}' is not one of {DTYPES}")
        self.model = root.resolve().name
        self.name = "local_" + re.sub(r"[^A-Za-z0-9._-]+", "_", self.model)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.max_reasks = max_reasks
        self._device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        try:
            self._processor = AutoProcessor.from_pretrained(root, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(
                root, local_files_only=True, dtype=dtype if dtype == "auto" else getattr(torch, dtype)
            )
        except (OSError, ValueError, KeyError) as e:  # no config/weights, or not an image-text-to-text model
            raise TeacherConfigError(f"'{root}' is not a loadable vision-language model directory: {e}") from e
        if getattr(self._processor, "chat_template", None) is None or not hasattr(self._processor, "image_processor"):
            raise TeacherConfigError(f"'{root}': the processor needs an image processor and a chat template")
        self._model = model.to(self._device).eval()
        self._lock = threading.Lock()

    def inputs(self, episode: EpisodeContext, step: int):
        """The processor's tensors for one step: the images, then the prompt, in the model's chat template."""
        if episode.images is None:
            raise ValueError("the local VLM teacher needs the step images")
        images = [Image.open(io.BytesIO(data)).convert("RGB") for _, enc, data in episode.images[step] if enc in MIME]
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": render_prompt(episode.instructions[step])}]
        text = self._processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = self._processor(text=text, images=images or None, return_tensors="pt")
        return inputs.to(self._device, dtype=self._model.dtype)  # casts only the float tensors (pixel values)

    def _generate_text(self, inputs, temperature: float | None = None) -> tuple[str, int, int]:
        """(answer, prompt tokens, generated tokens): the one place that runs the model."""
        import torch

        temperature = self.temperature if temperature is None else temperature
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        tok = self._processor.tokenizer
        with self._lock, torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling,
                                       pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        n_in = inputs["input_ids"].shape[1]
        new = out[0, n_in:]
        return self._processor.decode(new, skip_special_tokens=True), n_in, len(new)

    def annotate_step(self, episode: EpisodeContext, step: int) -> TraceRecord:
        inputs = self.inputs(episode, step)
        usage = {"input_tokens": 0, "output_tokens": 0}
        reason, text = "", ""
        for attempt in range(1, self.max_reasks + 2):
            text, n_in, n_out = self._generate_text(inputs) if attempt == 1 else self._generate_text(
                inputs, temperature=max(self.temperature, REASK_TEMPERATURE))
            usage["input_tokens"] += n_in
            usage["output_tokens"] += n_out
            try:
                trace = parse_tagged_text(text)
            except TraceFormatError as e:
                reason = f"{e}{f' (cut at max_new_tokens={self.max_new_tokens})' if n_out >= self.max_new_tokens else ''}"
                log.warning("%s step %d: malformed answer (attempt %d): %s", episode.episode_id, step, attempt, reason)
                continue
            return TraceRecord(step=step, status="ok", teacher=self.name, model=self.model, prompt_version=self.prompt_version,
                               trace=trace.to_dict(), raw_text=text, attempts=attempt, usage=usage)
        return TraceRecord(step=step, status="failed", teacher=self.name, model=self.model, prompt_version=self.prompt_version,
                           raw_text=text, error=f"no valid trace after {self.max_reasks + 1} answers: {reason}",
                           attempts=self.max_reasks + 1, usage=usage)
