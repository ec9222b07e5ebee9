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


def test_batch_prediction_equals_per_sample_prediction(checkpoint, reasoning_dirs):
    from models.spatialvla.policy import predict_action

    model, proc = load_checkpoint(checkpoint)
    proc.max_reasoning_tokens = 8
    recs = StepSamples([d / "train" for d in reasoning_dirs], 4).records[:3]
    images, texts, keys = [r["image"] for r in recs], [r["instruction"] for r in recs], [r["unnorm_key"] for r in recs]
    texts[2] = texts[2] + " now"  # a longer prompt: its own group, still one call
    for reason in (True, False):
        batch = predict_action(model, proc, images, texts, keys, reason=reason)
        assert batch.actions.shape == (3, 4, 7) and batch.grid_ids.shape == (3, 4, 3) and len(batch.reasoning) == 3
        for i in range(3):
            one = predict(model, proc, images[i], texts[i], keys[i], reason=reason)
            np.testing.assert_array_equal(one.grid_ids, batch.grid_ids[i])
            np.testing.assert_allclose(one.actions, batch.actions[i])
            assert one.reasoning == batch.reasoning[i]


def test_action_first_ordering_puts_actions_before_the_trace(checkpoint, reasoning_dirs):
    model, proc = load_checkpoint(checkpoint)
    proc.action_first = True
    x = StepSamples([d / "train" for d in reasoning_dirs], 4, proc.training_sample)[0]
    kinds, ids = x["token_kinds"], x["input_ids"]
    suffix = kinds[kinds != TOKEN_PREFIX]
    assert (suffix[:12] == TOKEN_ACTION).all() and (suffix[12:] == TOKEN_REASONING).all() and ids[-1] == proc.tokenizer.eos_token_id
    assert ((ids[kinds != TOKEN_PREFIX][:12] >= proc.action_token_begin_idx)).all()
    batch = proc.collate([x])
    assert (batch["token_type_ids"][0] == (kinds != TOKEN_PREFIX)).all()
    rec = StepSamples([reasoning_dirs[0] / "val"], 4).records[0]
    proc.max_reasoning_tokens = 4
    p = predict(model, proc, rec["image"], rec["instruction"], rec["unnorm_key"], reason=True)
    q = predict(model, proc, rec["image"], rec["instruction"], rec["unnorm_key"], reason=False)
    np.testing.assert_array_equal(p.grid_ids, q.grid_ids)  # actions come first, so the trace cannot change them


def test_processor_config_in_the_authors_schema(checkpoint, tmp_path):
    import json

    from models.spatialvla.processing_spatialvla import SpatialVLAProcessor

    _, proc = load_checkpoint(checkpoint)
    proc.intrinsic_config = {"bridge_orig/1.0.0": {"intrinsic": [[623.588, 0, 319.5], [0, 623.588, 239.5], [0, 0, 1]], "height": 480, "width": 640},
                             "default": {"intrinsic": [[500.0, 0, 128], [0, 400.0, 96], [0, 0, 1]], "height": 192, "width": 256}}
    proc.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "processor_config.json").read_text())
    for key in ("action_chunk_size", "action_config", "bin_policy", "intrinsic_config", "statistics", "min_sigma", "num_obs_steps", "obs_delta"):
        assert key in cfg, key
    assert cfg["action_config"]["num_bins"]["total"] == 8194 and set(cfg["bin_policy"]) == {"translation", "rotation"}
    again = SpatialVLAProcessor.from_pretrained(tmp_path)
    k = again.intrinsic("bridge_orig/1.0.0")  # rows 0 and 1 scaled to the 224 px model input
    assert torch.allclose(k, torch.tensor([[623.588 * 224 / 640, 0, 319.5 * 224 / 640], [0, 623.588 * 224 / 480, 239.5 * 224 / 480], [0, 0, 1]]))
    assert torch.allclose(again.intrinsic("unknown/1.0.0"), torch.tensor([[500.0 * 224 / 256, 0, 112], [0, 400.0 * 224 / 192, 112], [0, 0, 1]]))


def test_padded_training_batch_equals_single_samples(checkpoint, reasoning_dirs):
    """The collator gives padding token_type 1, so the prefix-LM mask hides it: each row's logits do not depend on
    the batch it is padded into."""
    model, proc = load_checkpoint(checkpoint)
    s = StepSamples([d / "train" for d in reasoning_dirs], 4, proc.training_sample)
    samples = [s[0], next(s[i] for i in range(1, len(s)) if len(s[i]["input_ids"]) != len(s[0]["input_ids"]))]
    batch = proc.collate(samples)
    with torch.no_grad():
        both = model(**proc.model_inputs(batch)).logits
        for i, x in enumerate(samples):
            alone = model(**proc.model_inputs(proc.collate([x]))).logits[0]
            n = len(x["input_ids"])
            torch.testing.assert_close(both[i, :n], alone, atol=2e-5, rtol=1e-5)
