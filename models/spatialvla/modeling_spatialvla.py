"""The student: SigLIP + ZoeDepth/Ego3D → projector → Gemma2 (SpatialVLA's architecture on current transformers).

Numerics follow SpatialVLA's own code (transformers 4.47, eager attention, its default for Gemma2):
- pixel_values arrive in [0, 1] (cast to the model dtype); SigLIP sees `(x - 0.5) / 0.5`;
- Ego3D (when `use_vision_zoe`): ZoeDepth sees the image reflect-padded by 31 px, bicubic-resized
  (align_corners) to 384 x 384 (`zoe_image_size`) and normalised 0.5/0.5; its `predicted_depth` is resized bicubic back to the
  padded size and cropped. The depth map is area-resized to (16·r) x (16·r) (r = `ego3d_patch_reso`) and
  back-projected through K⁻¹ at pixel centres on a grid of step patch/r (offset patch/r/2): r² points per
  patch, x,y,z each → (B, 256, 3r²). The position MLP sees per coordinate [c, sin(2^k c), cos(2^k c)]_{k<8}
  of c = (xyz − [0,0,2]) / 2 and adds its output to the SigLIP features; depth and back-projection carry no
  gradient;
- image features = projector(features) / sqrt(text hidden); they replace the `<image>` rows of the *unscaled*
  input embeddings; with `use_spatial_token`, action ids take their row from `spatial_embed_tokens`; then
  everything is multiplied by sqrt(text hidden) (Gemma2's normaliser, applied once, in the embedding dtype);
- position ids are 1-based and count every position (padding included), as PaliGemma's `cache_position + 1`;
- attention mask (additive, PaliGemma 4.47's eager path): without `token_type_ids` the whole input is a
  bidirectional prefix (SpatialVLA's inference prompt); with them, causal, padding columns masked, then every
  token_type-0 column visible to all rows (the prefix-LM training mask). Type-0 padding columns become visible
  too, exactly as in 4.47; our collator gives padding type 1 so that padded batches equal single samples.
  SpatialVLA's own fine-tuning ran FlashAttention-2, which ignores both rules and trains plain causal.
- Gemma2's sliding-window layers additionally mask keys more than `sliding_window` positions back.
- `loss` (when `labels` are given): fp32 logits, shifted, positions with attention_mask 0 dropped, mean CE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Gemma2ForCausalLM, PreTrainedModel, SiglipVisionModel

from models.spatialvla.action_tokenizer import TOKENS_PER_STEP, SpatialActionTokenizer
from models.spatialvla.configuration_spatialvla import SpatialVLAConfig

ZOE_PAD = 31


class SpatialVLAProjector(nn.Module):
    def __init__(self, config: SpatialVLAConfig):
        super().__init__()
        self.linear = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Ego3DPositionEncoding(nn.Module):
    """Per-patch 3-D points (B, N, 3·points) → (B, N, width): NeRF-style frequencies, then an MLP."""

    def __init__(self, points_per_patch: int, width: int, n_freqs: int):
        super().__init__()
        channels = 3 * points_per_patch
        self.register_buffer("freq_bands", 2.0 ** torch.arange(n_freqs, dtype=torch.float32), persistent=False)
        self.register_buffer("center", torch.tensor([0.0, 0.0, 2.0]).repeat(points_per_patch), persistent=False)
        self.position_embedding_head = nn.Sequential(
            nn.Linear(channels * (2 * n_freqs + 1), width), nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width)
        )

    def reset_parameters(self) -> None:
        for p in self.position_embedding_head.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p, gain=0.01)  # SpatialVLA: small weights, the encoding starts near zero

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            c = ((xyz - self.center) / 2.0).to(self.freq_bands.dtype)
            f = c.unsqueeze(-1) * self.freq_bands
            enc = torch.cat([c.unsqueeze(-1), torch.sin(f), torch.cos(f)], -1).reshape(*xyz.shape[:2], -1)
        return self.position_embedding_head(enc)


@dataclass
class SpatialVLAOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    past_key_values: object = None
    attentions: tuple | None = None


def attention_masks(attention_mask, token_type_ids, batch: int, length: int, dtype, device, sliding_window: int | None) -> dict:
    """Additive (B, 1, L, L) masks for a forward pass without cache (see the module docstring)."""
    lowest = torch.finfo(dtype).min
    if token_type_ids is not None:
        mask = torch.triu(torch.full((length, length), lowest, dtype=dtype, device=device), diagonal=1)
    else:
        mask = torch.zeros((length, length), dtype=dtype, device=device)
    mask = mask[None, None].expand(batch, 1, length, length).clone()
    if attention_mask is not None:
        mask = mask.masked_fill(attention_mask[:, None, None, :] == 0, lowest)
    if token_type_ids is not None:
        mask = mask.masked_fill(token_type_ids[:, None, None, :] == 0, 0.0)
    sliding = mask
    if sliding_window is not None and length > sliding_window:
        far = torch.tril(torch.ones((length, length), dtype=torch.bool, device=device), diagonal=-sliding_window)
        sliding = mask.masked_fill(far, lowest)
    return {"full_attention": mask, "sliding_attention": sliding}


class SpatialVLAForConditionalGeneration(PreTrainedModel):
    config_class = SpatialVLAConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["SpatialVLAProjector", "ZoeDepthForDepthEstimation", "Ego3DPositionEncoding", "Gemma2DecoderLayer", "SiglipEncoderLayer"]

    def __init__(self, config: SpatialVLAConfig):
        super().__init__(config)
        self.vision_tower = SiglipVisionModel(config.vision_config)
        self.multi_modal_projector = SpatialVLAProjector(config)
        self.language_model = Gemma2ForCausalLM(config.text_config)
        if config.use_vision_zoe:
            from transformers import ZoeDepthForDepthEstimation

            self.vision_zoe_model = ZoeDepthForDepthEstimation(config.vision_zoe_config)
            reso, patch, size = config.ego3d_patch_reso, config.vision_config.patch_size, config.vision_config.image_size
            self.position_embedding_3d = Ego3DPositionEncoding(reso * reso, config.vision_config.hidden_size, config.n_freqs)
            step = patch // reso
            y, x = torch.meshgrid(torch.arange(0, size, step), torch.arange(0, size, step), indexing="ij")
            centre = patch / reso / 2
            self.register_buffer("uv_h", torch.stack([x + centre, y + centre, torch.ones_like(x, dtype=torch.float32)]).reshape(3, -1), persistent=False)
        if config.use_spatial_token:
            self.spatial_embed_tokens = nn.Embedding(config.spatial_token_num, config.text_config.hidden_size)
        self.post_init()
        if config.use_vision_zoe:
            self.position_embedding_3d.reset_parameters()

    # ------------------------------------------------------------------ files (SpatialVLA's 4.47 layout)
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | str | None = torch.float32, **_: object) -> SpatialVLAForConditionalGeneration:
        """Load a SpatialVLA checkpoint directory (ours or the authors'); see models/spatialvla/checkpoint.py."""
        from models.spatialvla.checkpoint import load_into, read_config, read_weights

        config = read_config(path)
        model = cls(config)
        state = read_weights(path)
        load_into(model, state, str(path))
        if config.use_spatial_token:  # as the authors' from_pretrained: the action rows of embed_tokens mirror spatial_embed_tokens
            with torch.no_grad():
                model.language_model.get_input_embeddings().weight[-config.spatial_token_num:] = model.spatial_embed_tokens.weight
        if dtype == "auto":
            dtype = next(iter(state.values())).dtype
        return model.to(dtype) if dtype is not None else model

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None, max_shard_bytes: int = 5 * 1024**3, **_: object) -> None:
        from models.spatialvla.checkpoint import write_config, write_weights

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        n = self.config.spatial_token_num
        if self.config.use_spatial_token:  # keep the file in the form loading produces (action rows = spatial_embed_tokens)
            with torch.no_grad():
                self.language_model.get_input_embeddings().weight[-n:] = self.spatial_embed_tokens.weight
        state = dict(state_dict) if state_dict is not None else self.state_dict()
        table = "language_model.model.embed_tokens.weight"
        if self.config.use_spatial_token and state_dict is not None and table in state and "spatial_embed_tokens.weight" in state:
            state[table] = state[table].clone()
            state[table][-n:] = state["spatial_embed_tokens.weight"]
        write_weights(state, path, max_shard_bytes)
        write_config(self.config, path, str(next(iter(state.values())).dtype).removeprefix("torch."))

    # ------------------------------------------------------------------ embeddings
    def backproject(self, intrinsic: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Depth (B, 1, H, W) and K ((3, 3) or (B, 3, 3)) → per-patch camera points (B, patches, 3·r²)."""
        b, c, h, w = depth.shape
        patch, r = self.config.vision_config.patch_size, self.config.ego3d_patch_reso
        hp, wp = h // patch, w // patch
        d = F.interpolate(depth, size=(hp * r, wp * r), mode="area").reshape(b, c, -1)
        points = (torch.linalg.inv(intrinsic.float()) @ self.uv_h.float()) * d
        return points.reshape(b, 3, hp, r, wp, r).permute(0, 2, 4, 3, 5, 1).reshape(b, hp * wp, -1)

    def depth(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ZoeDepth's metric depth (B, 1, H, W) for images in [0, 1]."""
        p = ZOE_PAD
        z = F.pad(pixel_values, (p, p, p, p), mode="reflect")
        z = F.interpolate(z, size=(self.config.zoe_image_size, self.config.zoe_image_size), mode="bicubic", align_corners=True)
        z = (z - 0.5) / 0.5
        depth = self.vision_zoe_model(pixel_values=z).predicted_depth
        h, w = pixel_values.shape[-2:]
        return F.interpolate(depth.unsqueeze(1), size=(h + 2 * p, w + 2 * p), mode="bicubic", align_corners=True)[..., p:-p, p:-p]

    def get_image_features(self, pixel_values: torch.Tensor, intrinsic: torch.Tensor | None = None) -> torch.Tensor:
        pixel_values = pixel_values.to(self.dtype)
        feats = self.vision_tower(pixel_values=(pixel_values - 0.5) / 0.5).last_hidden_state
        if self.config.use_vision_zoe:
            if intrinsic is None:
                raise ValueError("this model encodes depth (use_vision_zoe): pass `intrinsic`, the (B, 3, 3) camera matrices from the processor")
            with torch.no_grad():
                # K in the model dtype first, as the authors' predict_action casts every float input to bf16
                xyz = self.backproject(intrinsic.to(pixel_values.device, pixel_values.dtype), self.depth(pixel_values))
            feats = feats + self.position_embedding_3d(xyz)
        return self.multi_modal_projector(feats) / math.sqrt(self.config.text_config.hidden_size)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, intrinsic: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings as Gemma2's decoder layers see them (already scaled by sqrt(hidden))."""
        table = self.language_model.get_input_embeddings()
        embeds = F.embedding(input_ids, table.weight, table.padding_idx)
        if self.config.use_spatial_token:
            begin = self.config.action_token_begin_idx
            is_action = (input_ids >= begin) & (input_ids < begin + self.config.spatial_token_num)
            if is_action.any():
                embeds = embeds.clone()
                embeds[is_action] = self.spatial_embed_tokens(input_ids[is_action] - begin).to(embeds.dtype)
        if pixel_values is not None:
            is_image = input_ids == self.config.image_token_index
            feats = self.get_image_features(pixel_values, intrinsic).to(embeds.dtype)
            if is_image.sum() != feats.shape[0] * feats.shape[1]:
                raise ValueError(f"{int(is_image.sum())} <image> tokens in input_ids but {feats.shape[0] * feats.shape[1]} image features")
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1).expand_as(embeds), feats)
        return embeds * torch.tensor(self.config.text_config.hidden_size**0.5, dtype=embeds.dtype)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        intrinsic: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        output_attentions: bool = False,
        logits_to_keep: int = 0,
        **_: object,
    ) -> SpatialVLAOutput:
        """Logits (and `loss` with `labels`, attentions / cache when asked).

        `logits_to_keep` > 0 computes logits for the last that many positions only (the labelled suffix):
        with a vocabulary much wider than the model, the head dominates the cost of a training step.
        """
        batch, length = input_ids.shape
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past + 1, past + length + 1, device=input_ids.device)[None].expand(batch, -1)
        embeds = self.embed(input_ids, pixel_values, intrinsic)
        if past == 0:
            mask = attention_masks(attention_mask, token_type_ids, batch, length, embeds.dtype, embeds.device,
                                   getattr(self.config.text_config, "sliding_window", None))
        else:
            mask = attention_mask
        out = self.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            logits_to_keep=logits_to_keep,
        )
        loss = None
        if labels is not None:
            logits = out.logits.float()
            k = logits.shape[1]
            targets = labels[:, length - k + 1 :]
            keep = attention_mask[:, length - k + 1 :] != 0 if attention_mask is not None else torch.ones_like(targets, dtype=torch.bool)
            loss = F.cross_entropy(logits[:, :-1][keep], targets[keep], ignore_index=-100)
        return SpatialVLAOutput(out.logits, loss, out.past_key_values, getattr(out, "attentions", None))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate_actions(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        action_steps: int,
        eos_token_id: int,
        intrinsic: torch.Tensor | None = None,
        max_reasoning_tokens: int = 0,
        action_first: bool = False,
        pad_token_id: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding with the KV cache for a batch of prompts of equal length (no padding).

        Reason-then-act (`action_first=False`): each row generates free tokens until it emits an action id or
        eos, or reaches `max_reasoning_tokens`; from those same logits it decodes `action_steps * 3` action
        tokens, each slot restricted to its sub-range (translation / rotation / gripper), so every result is a
        valid grid id. Action-first: the action tokens come first, then (if `max_reasoning_tokens` > 0) the
        trace until eos. Rows advance independently, one token per step each (finished rows feed padding that
        nothing reads), so a row's result does not depend on the rest of the batch.
        Returns (reasoning ids (B, <= max_reasoning_tokens), padded with eos; grid ids (B, steps, 3)).
        """
        begin, n_act = self.config.action_token_begin_idx, action_steps * TOKENS_PER_STEP
        batch, device = input_ids.shape[0], input_ids.device
        ranges = SpatialActionTokenizer.slot_ranges()
        out = self(input_ids=input_ids, pixel_values=pixel_values, intrinsic=intrinsic, use_cache=True, logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits[:, -1]
        reasoning = torch.full((batch, max_reasoning_tokens), eos_token_id, dtype=torch.long, device=device)
        grid = torch.zeros((batch, n_act), dtype=torch.long, device=device)
        n_reason = torch.zeros(batch, dtype=torch.long, device=device)
        n_action = torch.zeros(batch, dtype=torch.long, device=device)
        reasoning_done = torch.full((batch,), action_first or max_reasoning_tokens == 0, device=device)
        trace_done = torch.full((batch,), max_reasoning_tokens == 0, device=device)  # action-first: the trailing trace
        pos = input_ids.shape[1]
        rows = torch.arange(batch, device=device)
        for _ in range(n_act + max_reasoning_tokens + 1):
            free = logits.argmax(-1)
            if not action_first:  # a row in its trace switches to actions on an action id, eos or the length limit
                switch = ~reasoning_done & ((free >= begin) | (free == eos_token_id) | (n_reason >= max_reasoning_tokens))
                reasoning_done |= switch
            acting = reasoning_done & (n_action < n_act)
            if action_first:
                acting = n_action < n_act
            tracing = (~reasoning_done) if not action_first else (~acting & ~trace_done & (free != eos_token_id) & (n_reason < max_reasoning_tokens))
            if action_first:
                trace_done |= ~acting & ~tracing
            if not (acting | tracing).any():
                break
            slot = (n_action % TOKENS_PER_STEP).clamp(max=TOKENS_PER_STEP - 1)
            constrained = torch.stack([logits[:, begin + lo : begin + hi].argmax(-1) + lo for lo, hi in ranges], 1)[rows, slot]
            token = torch.full((batch,), pad_token_id, dtype=torch.long, device=device)
            token = torch.where(tracing, free, token)
            token = torch.where(acting, constrained + begin, token)
            idx_r, idx_a = n_reason.clamp(max=max(max_reasoning_tokens - 1, 0)), n_action.clamp(max=n_act - 1)
            if max_reasoning_tokens:
                reasoning[rows[tracing], idx_r[tracing]] = free[tracing]
            grid[rows[acting], idx_a[acting]] = constrained[acting]
            n_reason += tracing.long()
            n_action += acting.long()
            if bool((n_action >= n_act).all()) and (not action_first or max_reasoning_tokens == 0):
                break  # nothing will read the next token's logits
            pos += 1
            o = self.language_model(inputs_embeds=self.embed(token[:, None]), position_ids=torch.full((batch, 1), pos, device=device),
                                    past_key_values=cache, use_cache=True)
            cache, logits = o.past_key_values, o.logits[:, -1]
        return reasoning, grid.view(batch, action_steps, TOKENS_PER_STEP)
