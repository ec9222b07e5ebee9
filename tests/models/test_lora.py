"""LoRA on the tiny student: only adapters train, freezing still holds, merged equals unmerged."""

import torch

from data.training import StepSamples, split_dirs
from models.lora import DEFAULT_TARGETS, apply_lora, load_adapter, save_adapter, save_merged
from models.objective import freeze_filters, refinevla_loss
from models.spatialvla.policy import load_checkpoint, predict
from models.spatialvla.processing_spatialvla import SpatialVLAProcessor


def _batch(proc, reasoning_dirs, n=2):
    samples = StepSamples(split_dirs(reasoning_dirs, "val"), proc.action_chunk_size, proc.training_sample)
    return proc.collate([samples[i] for i in range(n)]), samples


def _loss(model, batch, weight=0.5):
    out = model(**SpatialVLAProcessor.model_inputs(batch))
    return refinevla_loss(out.logits, batch["labels"], batch["token_kinds"], weight)


def test_lora_trains_only_adapters_and_respects_frozen_layers(checkpoint, reasoning_dirs):
    model, proc = load_checkpoint(checkpoint)
    batch, _ = _batch(proc, reasoning_dirs)
    with torch.no_grad():
        before = _loss(model, batch)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model, modules = apply_lora(model, 4, 8, 0.0, DEFAULT_TARGETS, freeze_filters(True, False, 1))
    assert modules and not [m for m in modules if m.startswith(("language_model.model.layers.0.", "vision_tower."))]
    assert any(m.startswith("language_model.model.layers.1.") for m in modules)
    with torch.no_grad():  # B starts at zero: the objective and its λ split are the base model's
        at_init = _loss(peft_model, batch)
    for part in ("total", "action", "reasoning"):
        assert torch.allclose(getattr(at_init, part), getattr(before, part), atol=1e-6)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        _loss(peft_model, batch).total.backward()
        opt.step()
        opt.zero_grad()
    trained = peft_model.get_base_model().state_dict()
    for k, v in base.items():  # every base weight is where it was; peft renames wrapped ones to *.base_layer.*
        name = k if k in trained else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(trained[name], v), k
    assert any(not torch.all(p == 0) for n, p in peft_model.named_parameters() if "lora_B" in n)


def test_merged_and_adapter_exports_reload_to_the_same_outputs_and_actions(tmp_path, checkpoint, reasoning_dirs):
    model, proc = load_checkpoint(checkpoint)
    batch, samples = _batch(proc, reasoning_dirs)
    peft_model, _ = apply_lora(model, 4, 8, 0.0, DEFAULT_TARGETS, freeze_filters(True, False, 1))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    peft_model.eval()
    save_merged(peft_model, tmp_path / "merged")
    proc.save_pretrained(tmp_path / "merged")
    save_adapter(peft_model, tmp_path / "adapter")
    merged, merged_proc = load_checkpoint(tmp_path / "merged")
    unmerged = load_adapter(load_checkpoint(checkpoint)[0], tmp_path / "adapter").eval()
    with torch.no_grad():
        a, b = _loss(merged, batch), _loss(unmerged, batch)
        base = _loss(load_checkpoint(checkpoint)[0], batch)
    assert torch.allclose(a.total, b.total, atol=1e-4) and not torch.allclose(a.total, base.total, atol=1e-4)
    rec = samples.records[0]
    for reason in (False, True):
        p, q = (predict(m, pr, rec["image"], rec["instruction"], rec["unnorm_key"], reason=reason) for m, pr in ((merged, merged_proc), (unmerged, proc)))
        assert (p.grid_ids == q.grid_ids).all() and (p.actions == q.actions).all() and p.reasoning == q.reasoning
