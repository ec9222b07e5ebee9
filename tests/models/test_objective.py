import pytest
import torch
import torch.nn.functional as F

from models.objective import apply_freezing, freeze_filters, labelled_window, refinevla_loss
from models.spatialvla.processing_spatialvla import TOKEN_ACTION, TOKEN_REASONING


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, L, V = 2, 12, 50
    logits = torch.randn(B, L, V, generator=g)
    ids = torch.randint(0, V, (B, L), generator=g)
    kinds = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0], [0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 0, 0]])
    labels = torch.where(kinds > 0, ids, torch.full_like(ids, -100))
    return logits, labels, kinds


def test_parts_are_token_nll_split_by_kind():
    logits, labels, kinds = _batch()
    parts = refinevla_loss(logits, labels, kinds, reasoning_weight=0.3)
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none", ignore_index=-100)
    k = kinds[:, 1:]
    assert torch.allclose(parts.action, nll[k == TOKEN_ACTION].mean())
    assert torch.allclose(parts.reasoning, nll[k == TOKEN_REASONING].mean())
    assert torch.allclose(parts.total, parts.action + 0.3 * parts.reasoning)
    assert parts.action_count == int((k == TOKEN_ACTION).sum()) and parts.reasoning_count == int((k == TOKEN_REASONING).sum())


def test_lambda_zero_is_the_action_only_loss():
    logits, labels, kinds = _batch(1)
    action_only = labels.masked_fill(kinds != TOKEN_ACTION, -100)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 50), action_only[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(refinevla_loss(logits, labels, kinds, 0.0).total, expected)


def test_loss_on_a_suffix_window_equals_the_full_loss():
    logits, labels, kinds = _batch(2)
    k = labelled_window(labels)
    assert k == labels.shape[1] - 3 + 1  # first labelled position is 3 in row 1
    full, part = refinevla_loss(logits, labels, kinds, 0.5), refinevla_loss(logits[:, -k:], labels, kinds, 0.5)
    assert torch.allclose(full.total, part.total)


def test_freezing_keeps_frozen_weights_bit_identical(checkpoint):
    from models.spatialvla.policy import load_checkpoint

    model, proc = load_checkpoint(checkpoint)
    filters = freeze_filters(freeze_vision=True, freeze_embeddings=True, freeze_first_n_layers=2)
    counts = apply_freezing(model, filters)
    assert 0 < counts["params_trainable"] < counts["params_total"]
    frozen_names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("vision_tower.") for n in frozen_names)
    assert any(n.startswith("vision_zoe_model.") for n in frozen_names) and any(n.startswith("position_embedding_3d.") for n in frozen_names)
    assert "spatial_embed_tokens.weight" not in frozen_names
    assert "language_model.model.layers.1.self_attn.q_proj.weight" in frozen_names
    assert "language_model.model.layers.2.self_attn.q_proj.weight" not in frozen_names
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[proc.image_token_index] * 256 + [2, 10, 11, proc.action_token_begin_idx + 5, 1]])
    pixels = torch.rand(1, 3, 224, 224)
    for _ in range(2):
        model(input_ids=ids, pixel_values=pixels, intrinsic=proc.intrinsic(None)[None]).logits.float().square().mean().backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in frozen_names:
            assert torch.equal(p, before[n]), n
    assert not torch.equal(model.language_model.lm_head.weight, before["language_model.lm_head.weight"])


@pytest.mark.parametrize("n", [0, 3])
def test_filters_name_only_what_is_asked(n):
    f = freeze_filters(False, False, n)
    assert f == [r"^vision_zoe_model\."] + ([] if n == 0 else [r"^language_model\.model\.layers\.(0|1|2)\."])
