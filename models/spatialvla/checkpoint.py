"""SpatialVLA checkpoint directories (the transformers-4.47 layout of the authors' code) ⇄ our classes.

A checkpoint directory holds config.json (model_type "spatialvla", nested `text_config` gemma2,
`vision_config` siglip_vision_model, `vision_zoe_config` zoedepth + BEiT), generation_config.json,
processor_config.json / preprocessor_config.json / tokenizer files (models/spatialvla/processing_spatialvla),
and the weights as `model.safetensors` or shards `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`.

Weight names on disk are the 4.47 module paths. Current transformers renamed two sub-models, so names are
mapped on the way in and back on the way out (`to_disk_name` / `from_disk_name`):

    vision_tower.vision_model.X                               ⇄ vision_tower.X           (SiglipVisionModel lost its wrapper)
    vision_zoe_model.backbone.embeddings.X                    ⇄ ….backbone.beit.embeddings.X
    ….backbone.encoder.layer.N.attention.attention.query/key/value ⇄ ….backbone.beit.layers.N.attention.q/k/v_proj
    ….backbone.encoder.layer.N.attention.attention.relative_position_bias ⇄ ….beit.layers.N.relative_position_bias
    ….backbone.encoder.layer.N.attention.output.dense         ⇄ ….beit.layers.N.attention.o_proj
    ….backbone.encoder.layer.N.intermediate.dense / output.dense ⇄ ….beit.layers.N.mlp.fc1 / fc2
    ….backbone.encoder.layer.N.X (layernorms, lambda_1/2)     ⇄ ….beit.layers.N.X

Everything else (`language_model.model.*`, `language_model.lm_head`, `multi_modal_projector.linear`,
`spatial_embed_tokens`, `position_embedding_3d.position_embedding_head.{0,1,3}`, ZoeDepth's neck and heads) keeps
its name. A key that maps to no parameter, or a parameter no key provides, is an error naming the keys.
"""

from __future__ import annotations

import re
from pathlib import Path

from data.io import atomic_path, read_json, write_json_atomic

WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
_Z = r"vision_zoe_model\.backbone\."
_BEIT_ATTN = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}

# (disk regex, our template) and (our regex, disk template); the first matching rule applies.
_IN = [
    (r"^vision_tower\.vision_model\.(.*)$", r"vision_tower.\1"),
    (rf"^{_Z}embeddings\.(.*)$", r"vision_zoe_model.backbone.beit.embeddings.\1"),
    (rf"^{_Z}encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(.*)$", None),  # handled in code (q/k/v names)
    (rf"^{_Z}encoder\.layer\.(\d+)\.attention\.attention\.relative_position_bias\.(.*)$", r"vision_zoe_model.backbone.beit.layers.\1.relative_position_bias.\2"),
    (rf"^{_Z}encoder\.layer\.(\d+)\.attention\.output\.dense\.(.*)$", r"vision_zoe_model.backbone.beit.layers.\1.attention.o_proj.\2"),
    (rf"^{_Z}encoder\.layer\.(\d+)\.intermediate\.dense\.(.*)$", r"vision_zoe_model.backbone.beit.layers.\1.mlp.fc1.\2"),
    (rf"^{_Z}encoder\.layer\.(\d+)\.output\.dense\.(.*)$", r"vision_zoe_model.backbone.beit.layers.\1.mlp.fc2.\2"),
    (rf"^{_Z}encoder\.layer\.(\d+)\.(.*)$", r"vision_zoe_model.backbone.beit.layers.\1.\2"),
]
_OUT = [
    (r"^vision_tower\.(.*)$", r"vision_tower.vision_model.\1"),
    (r"^vision_zoe_model\.backbone\.beit\.embeddings\.(.*)$", r"vision_zoe_model.backbone.embeddings.\1"),
    (r"^vision_zoe_model\.backbone\.beit\.layers\.(\d+)\.attention\.([qkv])_proj\.(.*)$", None),
    (r"^vision_zoe_model\.backbone\.beit\.layers\.(\d+)\.relative_position_bias\.(.*)$", r"vision_zoe_model.backbone.encoder.layer.\1.attention.attention.relative_position_bias.\2"),
    (r"^vision_zoe_model\.backbone\.beit\.layers\.(\d+)\.attention\.o_proj\.(.*)$", r"vision_zoe_model.backbone.encoder.layer.\1.attention.output.dense.\2"),
    (r"^vision_zoe_model\.backbone\.beit\.layers\.(\d+)\.mlp\.fc1\.(.*)$", r"vision_zoe_model.backbone.encoder.layer.\1.intermediate.dense.\2"),
    (r"^vision_zoe_model\.backbone\.beit\.layers\.(\d+)\.mlp\.fc2\.(.*)$", r"vision_zoe_model.backbone.encoder.layer.\1.output.dense.\2"),
    (r"^vision_zoe_model\.backbone\.beit\.layers\.(\d+)\.(.*)$", r"vision_zoe_model.backbone.encoder.layer.\1.\2"),
]


def _apply(rules, name: str) -> str:
    for pattern, template in rules:
        m = re.match(pattern, name)
        if not m:
            continue
        if template is not None:
            return m.expand(template)
        layer, proj, rest = m.groups()
        if rules is _IN:
            return f"vision_zoe_model.backbone.beit.layers.{layer}.attention.{_BEIT_ATTN[proj]}.{rest}"
        disk = {v[0]: k for k, v in _BEIT_ATTN.items()}[proj]
        return f"vision_zoe_model.backbone.encoder.layer.{layer}.attention.attention.{disk}.{rest}"
    return name


def from_disk_name(name: str) -> str:
    return _apply(_IN, name)


def to_disk_name(name: str) -> str:
    return _apply(_OUT, name)


# ---------------------------------------------------------------------------------------------- config.json
_OURS = {"image_token_index", "action_token_begin_idx", "spatial_token_num", "use_spatial_token", "projection_dim", "use_vision_zoe",
         "ego3d_patch_reso", "n_freqs", "zoe_image_size"}
# Keys SpatialVLA's config.json may hold that carry nothing we use (4.47 PretrainedConfig bookkeeping and generation defaults).
_IGNORED = {
    "_vocab_size", "vocab_size", "hidden_size", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version", "model_type",
    "_name_or_path", "bos_token_id", "eos_token_id", "pad_token_id", "ignore_index", "_attn_implementation_autoset", "tie_word_embeddings",
    "is_encoder_decoder", "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16", "tf_legacy_loss",
    "pruned_heads", "chunk_size_feed_forward", "is_decoder", "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder",
    "finetuning_task", "id2label", "label2id", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params",
    "problem_type", "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens",
}
_SUB = {"text_config": "gemma2", "vision_config": "siglip_vision_model", "vision_zoe_config": "zoedepth"}


def read_config(path: str | Path):
    """config.json of a SpatialVLA checkpoint → SpatialVLAConfig; anything we would silently mis-read is an error."""
    from models.spatialvla.configuration_spatialvla import SpatialVLAConfig

    file = Path(path) / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"{file.parent}: no config.json; not a checkpoint directory")
    raw = read_json(file)
    if raw.get("model_type") != "spatialvla":
        raise ValueError(f"{file}: model_type is {raw.get('model_type')!r}, expected 'spatialvla'")
    unknown = sorted(set(raw) - _OURS - _IGNORED - set(_SUB))
    if unknown:
        raise ValueError(f"{file}: unsupported keys {unknown}; this loader understands {sorted(_OURS | set(_SUB))} (+ transformers bookkeeping)")
    subs = {}
    for key, model_type in _SUB.items():
        sub = raw.get(key)
        if sub is None:
            if key == "vision_zoe_config" and not raw.get("use_vision_zoe", True):
                subs[key] = None
                continue
            raise ValueError(f"{file}: '{key}' is missing")
        sub = dict(sub)
        if sub.setdefault("model_type", model_type) != model_type:
            raise ValueError(f"{file}: {key}.model_type is {sub['model_type']!r}, expected {model_type!r}")
        for k in ("torch_dtype", "dtype", "_attn_implementation_autoset", "transformers_version", "_name_or_path", "num_image_tokens", "projection_dim"):
            sub.pop(k, None)
        subs[key] = sub
    text = subs["text_config"]
    if text.get("rope_scaling"):
        raise ValueError(f"{file}: text_config.rope_scaling={text['rope_scaling']} is not supported (SpatialVLA uses plain RoPE)")
    if "rope_theta" in text:
        text["rope_parameters"] = {"rope_theta": text.pop("rope_theta"), "rope_type": "default"}
    # 4.47 wrote only non-default sub-config keys; SpatialVLA's text config defaults are Gemma2's, which are unchanged.
    vocab = raw.get("_vocab_size", raw.get("vocab_size"))
    if vocab is not None and text.get("vocab_size") is not None and vocab != text["vocab_size"]:
        raise ValueError(f"{file}: _vocab_size={vocab} but text_config.vocab_size={text['vocab_size']}")
    if vocab is not None:
        text.setdefault("vocab_size", vocab)
    use_zoe = raw.get("use_vision_zoe", True)  # SpatialVLAConfig's default in the authors' code
    if use_zoe and subs["vision_zoe_config"] is None:
        raise ValueError(f"{file}: use_vision_zoe is true but vision_zoe_config is missing")
    reso, patch = raw.get("ego3d_patch_reso", 4), subs["vision_config"].get("patch_size", 16)
    if use_zoe and patch % reso:
        raise ValueError(f"{file}: ego3d_patch_reso={reso} must divide vision_config.patch_size={patch}")
    return SpatialVLAConfig(
        vision_config=subs["vision_config"], text_config=text, vision_zoe_config=subs["vision_zoe_config"] if use_zoe else None,
        image_token_index=raw.get("image_token_index", 256000), action_token_begin_idx=raw.get("action_token_begin_idx"),
        spatial_token_num=raw.get("spatial_token_num", 259), use_spatial_token=raw.get("use_spatial_token", False),
        projection_dim=raw.get("projection_dim", 2048), use_vision_zoe=use_zoe, ego3d_patch_reso=reso, n_freqs=raw.get("n_freqs", 8), zoe_image_size=raw.get("zoe_image_size", 384),
        bos_token_id=raw.get("bos_token_id", 2), eos_token_id=raw.get("eos_token_id", 1), pad_token_id=raw.get("pad_token_id", 0),
    )


def _sub_dict(cfg) -> dict:
    d = cfg.to_diff_dict()
    for k in ("transformers_version", "dtype", "architectures", "_name_or_path", "output_attentions", "output_hidden_states", "return_dict",
              "use_bidirectional_attention", "layer_types"):
        d.pop(k, None)
    if "rope_parameters" in d:
        d["rope_theta"] = d.pop("rope_parameters")["rope_theta"]
    if isinstance(d.get("backbone_config"), dict):
        d["backbone_config"] = {k: v for k, v in d["backbone_config"].items() if k not in ("dtype", "_name_or_path", "architectures")}
    return d


def config_dict(config, dtype: str = "float32") -> dict:
    """Our config → config.json in the authors' schema (readable by their code under transformers 4.47)."""
    import transformers

    text = _sub_dict(config.text_config)
    text["num_image_tokens"] = config.num_image_tokens
    vision = _sub_dict(config.vision_config)
    vision["projection_dim"] = config.projection_dim
    out = {
        "architectures": ["SpatialVLAForConditionalGeneration"], "model_type": "spatialvla",
        "_vocab_size": config.text_config.vocab_size, "action_token_begin_idx": config.action_token_begin_idx,
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "ego3d_patch_reso": config.ego3d_patch_reso, "hidden_size": config.text_config.hidden_size, "image_token_index": config.image_token_index,
        "n_freqs": config.n_freqs, "projection_dim": config.projection_dim, "spatial_token_num": config.spatial_token_num,
        "use_spatial_token": config.use_spatial_token, "use_vision_zoe": config.use_vision_zoe,
        "torch_dtype": dtype, "transformers_version": transformers.__version__,
        "text_config": text, "vision_config": vision,
    }
    if config.zoe_image_size != 384:  # ours only (the authors' code always feeds ZoeDepth 384 px)
        out["zoe_image_size"] = config.zoe_image_size
    if config.use_vision_zoe:
        out["vision_zoe_config"] = _sub_dict(config.vision_zoe_config)
    return out


# ---------------------------------------------------------------------------------------------- weights
def read_weights(path: str | Path) -> dict:
    """All tensors of a checkpoint directory (single file or index + shards), under their on-disk names."""
    from safetensors.torch import load_file

    path = Path(path)
    if (path / INDEX).exists():
        index = read_json(path / INDEX)
        shards = sorted(set(index["weight_map"].values()))
        state = {}
        for shard in shards:
            if not (path / shard).exists():
                raise FileNotFoundError(f"{path / INDEX} names {shard}, which is missing")
            state.update(load_file(path / shard))
        missing = sorted(set(index["weight_map"]) - set(state))
        if missing:
            raise ValueError(f"{path / INDEX}: keys not found in their shards: {missing[:10]}")
        return state
    if (path / WEIGHTS).exists():
        return load_file(path / WEIGHTS)
    raise FileNotFoundError(f"{path}: neither {WEIGHTS} nor {INDEX}")


def load_into(model, disk_state: dict, where: str) -> None:
    """Map 4.47 names onto `model` and copy; unmapped or missing keys are errors that name them."""
    ours = model.state_dict()
    mapped = {from_disk_name(k): v for k, v in disk_state.items()}
    unexpected = sorted(k for k in disk_state if from_disk_name(k) not in ours)
    missing = sorted(set(ours) - set(mapped))
    if unexpected or missing:
        raise ValueError(f"{where}: checkpoint does not fit the model config: "
                         f"{len(unexpected)} unmapped checkpoint keys {unexpected[:8]}, {len(missing)} missing model keys {missing[:8]}")
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(ours[k].shape)]
    if bad:
        raise ValueError(f"{where}: shape mismatch for {[(k, tuple(mapped[k].shape), tuple(ours[k].shape)) for k in bad[:8]]}")
    model.load_state_dict(mapped, strict=True)


def write_weights(state: dict, path: str | Path, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Our state dict → 4.47 names, one file or shards + index (atomic per file)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    disk = {to_disk_name(k): v.detach().cpu().contiguous() for k, v in state.items()}
    shards, size, current = [], 0, {}
    for k in sorted(disk):
        n = disk[k].numel() * disk[k].element_size()
        if current and size + n > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k] = disk[k]
        size += n
    shards.append(current)
    for stale in list(path.glob("model*.safetensors")) + ([path / INDEX] if (path / INDEX).exists() else []):
        stale.unlink()
    if len(shards) == 1:
        with atomic_path(path / WEIGHTS) as tmp:
            save_file(shards[0], str(tmp), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        with atomic_path(path / name) as tmp:
            save_file(shard, str(tmp), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in disk.values())
    write_json_atomic(path / INDEX, {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def write_config(config, path: str | Path, dtype: str) -> None:
    path = Path(path)
    write_json_atomic(path / "config.json", config_dict(config, dtype))
    write_json_atomic(path / "generation_config.json", {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                                                         "pad_token_id": config.pad_token_id, "cache_implementation": "hybrid"})
