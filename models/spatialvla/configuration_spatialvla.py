"""SpatialVLA model configuration (transformers 5 composite config).

Field names follow SpatialVLA's config.json (`image_token_index`, `action_token_begin_idx`,
`spatial_token_num`, `use_spatial_token`, `projection_dim`, `text_config` = gemma2, `vision_config` =
siglip_vision_model) so a real checkpoint's config reads into it. The Ego3D/ZoeDepth fields of the real
model (`use_vision_zoe`, `ego3d_patch_reso`, `n_freqs`) are carried but not used by this skeleton
(issue #5 adds depth).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec


@strict
class SpatialVLAConfig(PreTrainedConfig):
    model_type = "spatialvla"
    sub_configs_defaults = {
        # SigLIP-so400m / Gemma2-2B, the real 4 B shape (models/spatialvla/presets.py has the tiny one).
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="siglip_vision_model",
            init_kwargs={"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
                         "patch_size": 14, "image_size": 224, "vision_use_head": False},
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="gemma2",
            init_kwargs={"hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
                         "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 265347, "tie_word_embeddings": False},
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_index: int = 257152  # the `<image>` placeholder id
    action_token_begin_idx: int = 257153  # first of the 8194 `<ACTIONxxxxx>` ids
    spatial_token_num: int = 8194
    use_spatial_token: bool = False  # True: action ids embed from `spatial_embed_tokens` (SpatialVLA)
    projection_dim: int = 2304
    use_vision_zoe: bool = False
    ego3d_patch_reso: int = 2
    n_freqs: int = 8
    tie_word_embeddings: bool = False

    @property
    def num_image_tokens(self) -> int:
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2


AutoConfig.register("spatialvla", SpatialVLAConfig, exist_ok=True)


# Named model shapes. "tiny" keeps SpatialVLA's structure (256 image tokens from 224 px / patch 14,
# Gemma2 with alternating sliding/full attention, untied head) at a size that trains on a laptop CPU.
SHAPES = {
    "tiny": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "head_dim": 16},
    },
    "4b": {
        "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16},
        "text": {"hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
                 "num_key_value_heads": 4, "head_dim": 256},
    },
}


def spatialvla_config(shape: str, vocab_size: int, image_token_index: int, action_token_begin_idx: int) -> SpatialVLAConfig:
    """A config of a named shape for a tokenizer with `vocab_size` ids (text + <image> + 8194 actions)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown model shape '{shape}'; known: {sorted(SHAPES)}")
    s = SHAPES[shape]
    return SpatialVLAConfig(
        vision_config={"model_type": "siglip_vision_model", "image_size": 224, "patch_size": 14, "vision_use_head": False, **s["vision"]},
        text_config={"model_type": "gemma2", "vocab_size": vocab_size, "tie_word_embeddings": False, "max_position_embeddings": 8192,
                     "sliding_window": 4096, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
                     "query_pre_attn_scalar": s["text"]["head_dim"], **s["text"]},  # Gemma2-2B: 256 = its head_dim
        image_token_index=image_token_index,
        action_token_begin_idx=action_token_begin_idx,
        projection_dim=s["text"]["hidden_size"],
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
