"""A checkpoint in the authors' transformers-4.47 layout loads into our classes and reproduces their outputs.

tests/models/data/spatialvla_tiny_447.json was written by SpatialVLA's own code under transformers 4.47
(make_reference_447.py beside it): its config.json, its weight names and shapes, and its outputs for fixed
inputs. The weights are a deterministic function of name rank and shape, so the test rebuilds them exactly.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.spatialvla.modeling_spatialvla import SpatialVLAForConditionalGeneration

DATA = Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_reference_447", DATA / "make_reference_447.py")
ref_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref_module)
REF = json.loads((DATA / "spatialvla_tiny_447.json").read_text())


def write_447_checkpoint(path: Path, drop: str | None = None, config_extra: dict | None = None) -> dict:
    """The reference checkpoint, sharded in two files + index as transformers 4.47 writes large models."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({**REF["config"], **(config_extra or {})}))
    state = {k: ref_module.reference_tensor(i, shape) for i, (k, shape) in enumerate(sorted(REF["keys"].items()))}
    names = [k for k in sorted(state) if k != drop]
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(path / file), metadata={"format": "pt"})
    index = {"metadata": {"total_size": 0}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return state


def greedy(model, x: dict, steps: int) -> list[list[int]]:
    """Plain greedy decoding with the KV cache (what `generate(do_sample=False)` does)."""
    p = x["prompt"]
    out = model(input_ids=p, pixel_values=x["pixel_values"], intrinsic=x["intrinsic"], use_cache=True, logits_to_keep=1)
    cache, token, tokens = out.past_key_values, out.logits[:, -1].argmax(-1), []
    for i in range(steps):
        tokens.append(token)
        o = model.language_model(inputs_embeds=model.embed(token[:, None]), position_ids=torch.full((len(p), 1), p.shape[1] + i + 1),
                                 past_key_values=cache, use_cache=True)
        cache, token = o.past_key_values, o.logits[:, -1].argmax(-1)
    return torch.stack(tokens, 1).tolist()


@torch.no_grad()
def test_a_447_checkpoint_reproduces_the_authors_outputs(tmp_path):
    write_447_checkpoint(tmp_path / "ckpt")
    model = SpatialVLAForConditionalGeneration.from_pretrained(tmp_path / "ckpt").eval()
    assert model.config.use_vision_zoe and model.config.use_spatial_token and model.config.ego3d_patch_reso == 2
    x = ref_module.reference_inputs()
    feats = model.get_image_features(x["pixel_values"], x["intrinsic"])  # SigLIP + ZoeDepth depth → Ego3D → projector
    assert feats.double().sum().item() == pytest.approx(REF["image_features_sum"], abs=1e-4)
    assert torch.allclose(feats[:, :3, :8], torch.tensor(REF["image_features_head"]), atol=1e-6)
    train = model(input_ids=x["input_ids"], pixel_values=x["pixel_values"], intrinsic=x["intrinsic"], attention_mask=x["attention_mask"],
                  token_type_ids=x["token_type_ids"], labels=x["labels"])  # prefix-LM training mask, padded batch
    assert train.loss.item() == pytest.approx(REF["train_loss"], abs=1e-5)
    assert torch.allclose(train.logits[:, -3, :64], torch.tensor(REF["train_logits_last_labelled"]), atol=1e-5)
    p = x["prompt"]
    infer = model(input_ids=p, pixel_values=x["pixel_values"], intrinsic=x["intrinsic"], attention_mask=torch.ones_like(p))  # bidirectional prompt
    assert torch.allclose(infer.logits[:, -1, :64], torch.tensor(REF["infer_logits_last"]), atol=1e-5)
    assert infer.logits[:, -1].argmax(-1).tolist() == REF["infer_argmax"]
    assert greedy(model, x, 12) == REF["generated"]


@torch.no_grad()
def test_save_writes_the_447_layout_back_losslessly(tmp_path):
    source = write_447_checkpoint(tmp_path / "ckpt")
    model = SpatialVLAForConditionalGeneration.from_pretrained(tmp_path / "ckpt").eval()
    model.save_pretrained(tmp_path / "out", max_shard_bytes=2**20)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(REF["keys"])  # the authors' names, not ours
    written = {}
    for shard in sorted(set(index["weight_map"].values())):
        written.update(load_file(tmp_path / "out" / shard))
    for k, v in source.items():
        if k != "language_model.model.embed_tokens.weight":  # its action rows mirror spatial_embed_tokens (the authors' loader does the same)
            assert torch.equal(written[k], v), k
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    for key in ("model_type", "_vocab_size", "image_token_index", "action_token_begin_idx", "spatial_token_num", "use_spatial_token",
                "use_vision_zoe", "ego3d_patch_reso", "n_freqs", "projection_dim"):
        assert config[key] == REF["config"][key], key
    again = SpatialVLAForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    x = ref_module.reference_inputs()
    args = dict(input_ids=x["input_ids"], pixel_values=x["pixel_values"], intrinsic=x["intrinsic"], attention_mask=x["attention_mask"])
    assert torch.equal(model(**args).logits, again(**args).logits)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_unknown_config_keys_and_unmapped_weights_are_named(tmp_path):
    write_447_checkpoint(tmp_path / "a", config_extra={"use_fancy_thing": True})
    with pytest.raises(ValueError, match="use_fancy_thing"):
        SpatialVLAForConditionalGeneration.from_pretrained(tmp_path / "a")
    write_447_checkpoint(tmp_path / "b", drop="position_embedding_3d.position_embedding_head.3.weight")
    with pytest.raises(ValueError, match=r"missing model keys \['position_embedding_3d.position_embedding_head.3.weight'\]"):
        SpatialVLAForConditionalGeneration.from_pretrained(tmp_path / "b")
    state = write_447_checkpoint(tmp_path / "c")
    save_file({"vision_zoe_model.extra_head.weight": torch.zeros(2)}, str(tmp_path / "c" / "extra.safetensors"))
    index = json.loads((tmp_path / "c" / "model.safetensors.index.json").read_text())
    index["weight_map"]["vision_zoe_model.extra_head.weight"] = "extra.safetensors"
    (tmp_path / "c" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"unmapped checkpoint keys \['vision_zoe_model.extra_head.weight'\]"):
        SpatialVLAForConditionalGeneration.from_pretrained(tmp_path / "c")
    assert state
