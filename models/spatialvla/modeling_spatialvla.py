"""The student: SigLIP vision tower → linear projector → Gemma2 language model (PaliGemma2 layout).

Numerics follow SpatialVLA where the skeleton implements them:
- pixel_values arrive in [0, 1]; SigLIP sees `(x - 0.5) / 0.5`;
- image features = projector(SigLIP last_hidden_state) / sqrt(text hidden size), and replace the
  `<image>` placeholder embeddings (Gemma2 multiplies all input embeddings by sqrt(hidden) again);
- position ids are 1-based (PaliGemma);
- with `use_spatial_token`, action ids take their embedding row from `spatial_embed_tokens`.
Attention is causal over the whole sequence (what SpatialVLA trains with under FlashAttention-2); the
prefix-LM mask of its eager path and Ego3D depth encoding are left to issue #5.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Gemma2ForCausalLM, PreTrainedModel, SiglipVisionModel

from models.spatialvla.action_tokenizer import TOKENS_PER_STEP, SpatialActionTokenizer
from models.spatialvla.configuration_spatialvla import SpatialVLAConfig


class SpatialVLAProjector(nn.Module):
    def __init__(self, config: SpatialVLAConfig):
        super().__init__()
        self.linear = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class SpatialVLAForConditionalGeneration(PreTrainedModel):
    config_class = SpatialVLAConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: SpatialVLAConfig):
        super().__init__(config)
        self.vision_tower = SiglipVisionModel(config.vision_config)
        self.multi_modal_projector = SpatialVLAProjector(config)
        self.language_model = Gemma2ForCausalLM(config.text_config)
        if config.use_spatial_token:
            self.spatial_embed_tokens = nn.Embedding(config.spatial_token_num, config.text_config.hidden_size)
        self.post_init()

    # ------------------------------------------------------------------ embeddings
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = (pixel_values.to(self.dtype) - 0.5) / 0.5
        feats = self.vision_tower(pixel_values=x).last_hidden_state
        return self.multi_modal_projector(feats) / math.sqrt(self.config.text_config.hidden_size)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if self.config.use_spatial_token:
            begin = self.config.action_token_begin_idx
            is_action = (input_ids >= begin) & (input_ids < begin + self.config.spatial_token_num)
            if is_action.any():
                embeds = embeds.clone()
                embeds[is_action] = self.spatial_embed_tokens(input_ids[is_action] - begin).to(embeds.dtype)
        if pixel_values is not None:
            is_image = input_ids == self.config.image_token_index
            feats = self.get_image_features(pixel_values).to(embeds.dtype)
            if is_image.sum() != feats.shape[0] * feats.shape[1]:
                raise ValueError(f"{int(is_image.sum())} <image> tokens in input_ids but {feats.shape[0] * feats.shape[1]} image features")
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1).expand_as(embeds), feats)
        return embeds

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        output_attentions: bool = False,
        logits_to_keep: int = 0,
        **_: object,
    ):
        """Returns the language model's output (logits, and attentions / cache when asked).

        `logits_to_keep` > 0 computes logits for the last that many positions only (the labelled suffix):
        with a vocabulary much wider than the model, the head dominates the cost of a training step.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:  # 1-based, counting only real tokens (right padding keeps them aligned)
            position_ids = attention_mask.long().cumsum(-1)
        embeds = self.embed(input_ids, pixel_values)
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            logits_to_keep=logits_to_keep,
        )

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate_actions(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        action_steps: int,
        eos_token_id: int,
        max_reasoning_tokens: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding for a batch of prompts (no padding): reasoning first, then the action tokens.

        Up to `max_reasoning_tokens` free tokens are generated (stopping at the first action token or eos);
        then `action_steps * 3` action tokens are decoded with each slot restricted to its sub-range
        (translation / rotation / gripper), so the result is always a valid grid id. Uses the KV cache.
        Returns (reasoning token ids (B, <=max_reasoning_tokens) padded with eos, grid ids (B, steps, 3)).
        """
        begin = self.config.action_token_begin_idx
        out = self(input_ids=input_ids, pixel_values=pixel_values, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
        pos = input_ids.shape[1]
        batch = input_ids.shape[0]
        reasoning: list[torch.Tensor] = []
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)

        def step(token: torch.Tensor):
            nonlocal cache, pos
            pos += 1
            o = self.language_model(
                inputs_embeds=self.embed(token[:, None], None),
                position_ids=torch.full((batch, 1), pos, device=token.device),
                past_key_values=cache,
                use_cache=True,
            )
            cache = o.past_key_values
            return o.logits[:, -1]

        for _ in range(max_reasoning_tokens):
            token = logits.argmax(-1)
            done |= (token >= begin) | (token == eos_token_id)
            if done.all():
                break
            token = torch.where(done, torch.full_like(token, eos_token_id), token)
            reasoning.append(token)
            logits = step(token)

        grid: list[torch.Tensor] = []
        ranges = SpatialActionTokenizer.slot_ranges()
        for i in range(action_steps * TOKENS_PER_STEP):
            lo, hi = ranges[i % TOKENS_PER_STEP]
            g = logits[:, begin + lo : begin + hi].argmax(-1) + lo
            grid.append(g)
            if i + 1 < action_steps * TOKENS_PER_STEP:
                logits = step(g + begin)
        reasoning_ids = torch.stack(reasoning, 1) if reasoning else input_ids.new_zeros((batch, 0))
        return reasoning_ids, torch.stack(grid, 1).view(batch, action_steps, TOKENS_PER_STEP)
