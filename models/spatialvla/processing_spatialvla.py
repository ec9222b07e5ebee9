"""Turns (image, instruction, reasoning, action chunk) into token ids and back; saves SpatialVLA's files.

Sequence layout (SpatialVLA's, with ReFineVLA's reasoning in the suffix):

    prefix  = <image> x N, <bos>, tokens(instruction.lower() + "\\n")            not labelled
    suffix  = tokens(reasoning)[:max_reasoning_tokens], 12 action tokens, <eos>  labelled
              (`action_first`: 12 action tokens, reasoning, <eos>; inference can stop after the actions)

`token_kinds` marks each position: 0 prefix/padding, 1 reasoning, 2 action (the closing <eos> counts as
action, as in SpatialVLA whose labels are the action tokens plus <eos>). Actions are normalised with the
dataset's q01/q99 statistics (`statistics[unnorm_key]`) before the grid tokenizer sees them.

`token_type_ids` (PaliGemma's): 0 on the real prefix, 1 on the suffix and on padding (so padding stays masked;
see modeling_spatialvla). `intrinsic`: the dataset's camera matrix from `intrinsic_config[unnorm_key]`
(fallback "default"), rows 0 and 1 scaled to the model's image size, as SpatialVLA's processor does.

Files written by `save_pretrained` (names and keys as in SpatialVLA checkpoints): processor_config.json
(action_chunk_size, action_config, bin_policy, intrinsic_config, statistics, ...),
preprocessor_config.json (SigLIP image processor settings), and the tokenizer files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.actions import normalize, unnormalize
from data.io import read_json, write_json_atomic
from models.spatialvla.action_tokenizer import NUM_BINS, TOKENS_PER_STEP, SpatialActionTokenizer, token_strings

TOKEN_PREFIX, TOKEN_REASONING, TOKEN_ACTION = 0, 1, 2
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0, 1, 2, 3 as in Gemma
# SpatialVLA's scripts/intrinsics.json "default" (640x480), used for datasets without their own entry.
DEFAULT_INTRINSICS = {"default": {"intrinsic": [[623.588, 0, 319.5], [0, 623.588, 239.5], [0, 0, 1]], "height": 480, "width": 640}}


def build_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A small byte-level BPE tokenizer trained on the dataset's own text, with SpatialVLA's extra tokens.

    For models trained from scratch (the tiny demo model); real checkpoints bring their tokenizer.
    Ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3, the learned vocabulary, then <image>, then <ACTION00000>...
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.add_tokens(token_strings(), special_tokens=True)
    return fast


class SpatialVLAProcessor:
    def __init__(
        self,
        tokenizer,
        statistics: dict,
        bin_policy: dict,
        image_size: int = 224,
        num_image_tokens: int = 256,
        action_chunk_size: int = 4,
        max_reasoning_tokens: int = 244,
        intrinsic_config: dict | None = None,
        min_sigma: float = 0.0,
        action_first: bool = False,
        action_config: dict | None = None,
        num_obs_steps: int = 1,
        obs_delta: int = 1,
    ):
        self.tokenizer = tokenizer
        self.statistics = statistics
        self.bin_policy = bin_policy
        self.action_tokenizer = SpatialActionTokenizer(bin_policy)
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.action_chunk_size = action_chunk_size
        self.max_reasoning_tokens = max_reasoning_tokens
        self.intrinsic_config = intrinsic_config or DEFAULT_INTRINSICS
        self.min_sigma = min_sigma
        self.action_first = action_first
        self.action_config = action_config or {"num_bins": {**NUM_BINS, "total": 8194}, "use_spherical": True}
        self.num_obs_steps, self.obs_delta = num_obs_steps, obs_delta
        self.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
        self.action_token_begin_idx = tokenizer.convert_tokens_to_ids("<ACTION00000>")
        if self.action_token_begin_idx != self.image_token_index + 1:
            raise ValueError("tokenizer must place <ACTION00000> right after <image>")

    # ------------------------------------------------------------------ pieces
    def pixels(self, image: bytes | np.ndarray | Image.Image) -> torch.Tensor:
        """Encoded bytes or an HxWx3 uint8 image → (3, S, S) float in [0, 1] (bicubic resize)."""
        if isinstance(image, (bytes, bytearray)):
            image = Image.open(io.BytesIO(image))
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)

    def prompt_ids(self, instruction: str) -> list[int]:
        text_ids = self.tokenizer(instruction.lower() + "\n", add_special_tokens=False)["input_ids"]
        return [self.image_token_index] * self.num_image_tokens + [self.tokenizer.bos_token_id] + text_ids

    def reasoning_ids(self, text: str | None) -> list[int]:
        if not text:
            return []
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_reasoning_tokens]

    def action_grid_ids(self, actions: np.ndarray, unnorm_key: str) -> np.ndarray:
        """Raw (chunk, 7) actions → (chunk, 3) grid ids, normalised with the dataset's statistics."""
        stats = self._stats(unnorm_key)
        return self.action_tokenizer.encode(normalize(actions, stats))

    def decode_actions(self, grid_ids: np.ndarray, unnorm_key: str) -> np.ndarray:
        """(..., chunk, 3) grid ids → (..., chunk, 7) actions in the dataset's units (gripper 0/1)."""
        return unnormalize(self.action_tokenizer.decode(grid_ids), self._stats(unnorm_key))

    def intrinsic(self, unnorm_key: str | None) -> torch.Tensor:
        """(3, 3) camera matrix for the dataset, scaled from its recorded image size to the model's."""
        entry = self.intrinsic_config.get(unnorm_key) if unnorm_key else None
        entry = entry or self.intrinsic_config.get("default")
        if entry is None:
            raise KeyError(f"intrinsic_config has neither '{unnorm_key}' nor 'default' (keys: {sorted(self.intrinsic_config)})")
        k = torch.tensor(entry["intrinsic"], dtype=torch.float32)
        k[:2] *= torch.tensor([self.image_size / entry["width"], self.image_size / entry["height"]])[:, None]
        return k

    def _stats(self, unnorm_key: str) -> dict:
        if unnorm_key not in self.statistics:
            raise KeyError(f"no statistics for unnorm_key '{unnorm_key}'; this checkpoint has {sorted(self.statistics)}")
        return self.statistics[unnorm_key]["action"]

    # ------------------------------------------------------------------ samples and batches
    def training_sample(self, image, instruction: str, actions: np.ndarray, unnorm_key: str, reasoning: str | None) -> dict:
        prefix = self.prompt_ids(instruction)
        why = self.reasoning_ids(reasoning)
        act = (self.action_grid_ids(actions, unnorm_key).reshape(-1) + self.action_token_begin_idx).tolist()
        eos = [self.tokenizer.eos_token_id]
        if self.action_first:  # <eos> closes the sequence, so it is the last reasoning token (action if there is no trace)
            suffix = act + why + eos
            kinds = [TOKEN_ACTION] * len(act) + [TOKEN_REASONING] * len(why) + [TOKEN_REASONING if why else TOKEN_ACTION]
        else:
            suffix = why + act + eos
            kinds = [TOKEN_REASONING] * len(why) + [TOKEN_ACTION] * (len(act) + 1)
        return {
            "input_ids": torch.tensor(prefix + suffix),
            "labels": torch.tensor([-100] * len(prefix) + suffix),
            "token_kinds": torch.tensor([TOKEN_PREFIX] * len(prefix) + kinds),
            "pixel_values": self.pixels(image),
            "intrinsic": self.intrinsic(unnorm_key),
        }

    def collate(self, samples: list[dict]) -> dict:
        """Right-pad to the longest sample: ids with <pad>, labels with -100, kinds with 0."""
        n = max(len(s["input_ids"]) for s in samples)

        def pad(key, value):
            return torch.stack([torch.nn.functional.pad(s[key], (0, n - len(s[key])), value=value) for s in samples])

        input_ids = pad("input_ids", self.tokenizer.pad_token_id)
        lengths = torch.tensor([len(s["input_ids"]) for s in samples])
        attention_mask = (torch.arange(n)[None, :] < lengths[:, None]).long()
        kinds = pad("token_kinds", TOKEN_PREFIX)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": ((kinds != TOKEN_PREFIX) | (attention_mask == 0)).long(),
            "labels": pad("labels", -100),
            "token_kinds": kinds,
            "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
            "intrinsic": torch.stack([s["intrinsic"] if "intrinsic" in s else self.intrinsic(None) for s in samples]),
        }

    @staticmethod
    def model_inputs(batch: dict) -> dict:
        """The model's keyword arguments from a collated batch (labels stay out: the objective splits them)."""
        keys = ("input_ids", "pixel_values", "intrinsic", "attention_mask", "token_type_ids")
        return {k: batch[k] for k in keys if k in batch}

    def inference_inputs(self, images: list, instructions: list[str], unnorm_keys: list[str | None] | None = None) -> dict:
        ids = [self.prompt_ids(t) for t in instructions]
        if len({len(i) for i in ids}) != 1:
            raise ValueError("batched inference needs prompts of equal length; run them one by one")
        keys = unnorm_keys or [None] * len(images)
        return {"input_ids": torch.tensor(ids), "pixel_values": torch.stack([self.pixels(im) for im in images]),
                "intrinsic": torch.stack([self.intrinsic(k) for k in keys])}

    # ------------------------------------------------------------------ files
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        write_json_atomic(
            path / "processor_config.json",
            {
                "processor_class": "SpatialVLAProcessor",
                "action_chunk_size": self.action_chunk_size,
                "auto_map": {"AutoProcessor": "processing_spatialvla.SpatialVLAProcessor"},
                "action_config": self.action_config,
                "bin_policy": self.bin_policy,
                "intrinsic_config": self.intrinsic_config,
                "statistics": self.statistics,
                "min_sigma": self.min_sigma,
                "num_obs_steps": self.num_obs_steps,
                "obs_delta": self.obs_delta,
                "max_reasoning_tokens": self.max_reasoning_tokens,
                "action_first": self.action_first,
            },
        )
        write_json_atomic(
            path / "preprocessor_config.json",
            {
                "image_processor_type": "SiglipImageProcessor",
                "processor_class": "SpatialVLAProcessor",
                "do_resize": True,
                "size": {"height": self.image_size, "width": self.image_size},
                "resample": 3,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": False,
                "image_seq_length": self.num_image_tokens,
            },
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SpatialVLAProcessor:
        from transformers import AutoTokenizer

        path = Path(path)
        for name in ("processor_config.json", "preprocessor_config.json"):
            if not (path / name).exists():
                raise FileNotFoundError(f"{path}: {name} is missing; not a SpatialVLA checkpoint directory")
        cfg = read_json(path / "processor_config.json")
        pre = read_json(path / "preprocessor_config.json")
        return cls(
            tokenizer=AutoTokenizer.from_pretrained(path),
            statistics=cfg["statistics"],
            bin_policy=cfg["bin_policy"],
            image_size=pre["size"]["height"],
            num_image_tokens=pre.get("image_seq_length", 256),
            action_chunk_size=cfg.get("action_chunk_size", 4),
            max_reasoning_tokens=cfg.get("max_reasoning_tokens", 244),
            intrinsic_config=cfg.get("intrinsic_config"),
            min_sigma=cfg.get("min_sigma", 0.0),
            action_first=cfg.get("action_first", False),
            action_config=cfg.get("action_config"),
            num_obs_steps=cfg.get("num_obs_steps", 1),
            obs_delta=cfg.get("obs_delta", 1),
        )

    @property
    def action_tokens_per_chunk(self) -> int:
        return self.action_chunk_size * TOKENS_PER_STEP
