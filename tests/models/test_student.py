import numpy as np
import torch

from data.training import StepSamples
from models.spatialvla.policy import load_checkpoint, predict
from models.spatialvla.processing_spatialvla import TOKEN_ACTION, TOKEN_PREFIX, TOKEN_REASONING


def test_checkpoint_layout_and_reload(checkpoint, tmp_path):
    for name in ("config.json", "model.safetensors", "processor_config.json", "preprocessor_config.json", "tokenizer.json", "trainer_state.pt"):
        assert (checkpoint / name).exists(), name
    model, proc = load_checkpoint(checkpoint)
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"vision_tower", "multi_modal_projector", "language_model", "vision_zoe_model", "position_embedding_3d",
                     "spatial_embed_tokens"}  # SpatialVLA's prefixes
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    again, proc2 = load_checkpoint(tmp_path)
    ids = torch.tensor([proc.prompt_ids("put the block on the plate")])
    px, k = torch.rand(1, 3, 224, 224), proc.intrinsic("bridge_orig/1.0.0")[None]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=px, intrinsic=k).logits, again(input_ids=ids, pixel_values=px, intrinsic=k).logits)
    assert proc2.statistics == proc.statistics and proc2.bin_policy == proc.bin_policy


def test_training_sample_layout(checkpoint, reasoning_dirs):
    model, proc = load_checkpoint(checkpoint)
    s = StepSamples([d / "train" for d in reasoning_dirs], 4, proc.training_sample)
    x = s[0]
    kinds, ids, labels = x["token_kinds"], x["input_ids"], x["labels"]
    assert (ids[:256] == proc.image_token_index).all() and ids[256] == proc.tokenizer.bos_token_id
    assert (labels[kinds == TOKEN_PREFIX] == -100).all() and (labels[kinds != TOKEN_PREFIX] == ids[kinds != TOKEN_PREFIX]).all()
    action_ids = ids[kinds == TOKEN_ACTION]
    assert len(action_ids) == 13 and action_ids[-1] == proc.tokenizer.eos_token_id
    assert ((action_ids[:-1] >= proc.action_token_begin_idx) & (action_ids[:-1] < proc.action_token_begin_idx + 8194)).all()
    reasoning = proc.tokenizer.decode(ids[kinds == TOKEN_REASONING])
    assert reasoning.startswith("<Observation>:") and 0 < (kinds == TOKEN_REASONING).sum() <= proc.max_reasoning_tokens
    assert x["pixel_values"].shape == (3, 224, 224) and 0 <= x["pixel_values"].min() and x["pixel_values"].max() <= 1


def test_predict_returns_a_valid_action_chunk(checkpoint, reasoning_dirs):
    model, proc = load_checkpoint(checkpoint)
    rec = StepSamples([reasoning_dirs[0] / "val"], 4).records[0]
    for reason in (False, True):
        p = predict(model, proc, rec["image"], rec["instruction"], rec["unnorm_key"], reason=reason)
        assert p.actions.shape == (4, 7) and np.isfinite(p.actions).all()
        assert set(np.unique(p.actions[:, 6])) <= {0.0, 1.0}
        stats = proc.statistics[rec["unnorm_key"]]["action"]
        assert (p.actions[:, :6] >= np.array(stats["q01"][:6]) - 1e-5).all() and (p.actions[:, :6] <= np.array(stats["q99"][:6]) + 1e-5).all()
        if not reason:
            assert p.reasoning == ""  # action-only decoding generates no text
