"""SpatialVLA model configuration (transformers 5 composite config) and named shapes.

Field names follow SpatialVLA's config.json (`image_token_index`, `action_token_begin_idx`,
`spatial_token_num`, `use_spatial_token`, `projection_dim`, `use_vision_zoe`, `ego3d_patch_reso`, `n_freqs`;
sub-configs `text_config` = gemma2, `vision_config` = siglip_vision_model, `vision_zoe_config` = zoedepth
with a BEiT backbone). Reading and writing the checkpoint's config.json, with its checks, lives in
models/spatialvla/checkpoint.py.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec


@strict
class SpatialVLAConfig(PreTrainedConfig):
    model_type = "spatialvla"
    sub_configs_defaults = {
        # SigLIP-so400m / Gemma2-2B, the real 4 B shape (SHAPES below has the tiny one).
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
        "vision_zoe_config": SubConfigSpec(config_class=AutoConfig, model_type="zoedepth", optional=True),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_zoe_config: dict | PreTrainedConfig | None = None
    image_token_index: int = 257152  # the `<image>` placeholder id
    action_token_begin_idx: int = 257153  # first of the 8194 `<ACTIONxxxxx>` ids
    spatial_token_num: int = 8194
    use_spatial_token: bool = False  # True: action ids embed from `spatial_embed_tokens` (SpatialVLA)
    projection_dim: int = 2304
    use_vision_zoe: bool = False  # True: ZoeDepth depth → Ego3D position encoding added to the SigLIP features
    ego3d_patch_reso: int = 2  # depth sub-points per patch side (SpatialVLA checkpoints: 2 → 4 points per patch)
    n_freqs: int = 8
    zoe_image_size: int = 384  # ZoeDepth's input side (SpatialVLA hard-codes 384; only our tiny shape lowers it, for CPU speed)
    tie_word_embeddings: bool = False

    @property
    def num_image_tokens(self) -> int:
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2


AutoConfig.register("spatialvla", SpatialVLAConfig, exist_ok=True)

# ZoeDepth as in Intel/zoedepth-nyu-kitti (BEiT-L/16 at 384 px, two metric bin heads): the 4 B shape's depth model.
ZOE_4B = {
    "model_type": "zoedepth",
    "bin_configurations": [{"n_bins": 64, "min_depth": 0.001, "max_depth": 10.0, "name": "nyu"},
                           {"n_bins": 64, "min_depth": 0.001, "max_depth": 80.0, "name": "kitti"}],
    "num_patch_transformer_layers": 4, "patch_transformer_hidden_size": 128, "patch_transformer_intermediate_size": 1024,
    "patch_transformer_num_attention_heads": 4,  # the domain classifier that picks the nyu or kitti head
}
# The same architecture at a size that runs on a laptop CPU (BEiT 4 x 32 at 96 px, 16-channel neck); at SpatialVLA's
# 384 px ZoeDepth alone took ~7 s per batch of 8 on the 2-core CPU, now ~0.5 s.
ZOE_TINY = {
    "model_type": "zoedepth",
    "backbone_config": {"model_type": "beit", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
                        "image_size": 96, "patch_size": 16, "use_relative_position_bias": True, "reshape_hidden_states": False,
                        "out_features": ["stage1", "stage2", "stage3", "stage4"]},
    "neck_hidden_sizes": [16, 16, 16, 16], "fusion_hidden_size": 16, "bottleneck_features": 16, "num_relative_features": 8,
    "bin_embedding_dim": 16, "num_attractors": [4, 2, 2, 1],
    "bin_configurations": [{"n_bins": 8, "min_depth": 0.001, "max_depth": 10.0}],
}

# Named model shapes. "tiny" keeps SpatialVLA's structure (256 image tokens from 224 px / patch 14, ZoeDepth +
# Ego3D, spatial action embeddings, Gemma2 with alternating sliding/full attention, untied head) at a size that
# trains on a laptop CPU; "4b" is the real checkpoint's shape (random init, for benchmarks and counting).
SHAPES = {
    "tiny": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "head_dim": 16},
        "zoe": ZOE_TINY,
    },
    "4b": {
        "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16},
        "text": {"hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
                 "num_key_value_heads": 4, "head_dim": 256},
        "zoe": ZOE_4B,
    },
}


def spatialvla_config(shape: str, vocab_size: int, image_token_index: int, action_token_begin_idx: int, use_vision_zoe: bool = True,
                      use_spatial_token: bool = True) -> SpatialVLAConfig:
    """A config of a named shape for a tokenizer with `vocab_size` ids (text + <image> + 8194 actions)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown model shape '{shape}'; known: {sorted(SHAPES)}")
    s = SHAPES[shape]
    return SpatialVLAConfig(
        vision_config={"model_type": "siglip_vision_model", "image_size": 224, "patch_size": 14, "vision_use_head": False, **s["vision"]},
        text_config={"model_type": "gemma2", "vocab_size": vocab_size, "tie_word_embeddings": False, "max_position_embeddings": 8192,
                     "sliding_window": 4096, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
                     "query_pre_attn_scalar": s["text"]["head_dim"], **s["text"]},  # Gemma2-2B: 256 = its head_dim
        vision_zoe_config=dict(s["zoe"]) if use_vision_zoe else None,
        image_token_index=image_token_index,
        action_token_begin_idx=action_token_begin_idx,
        projection_dim=s["text"]["hidden_size"],
        use_spatial_token=use_spatial_token,
        use_vision_zoe=use_vision_zoe,
        zoe_image_size=s["zoe"].get("backbone_config", {}).get("image_size", 384),
        ego3d_patch_reso=2,
        n_freqs=8,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
