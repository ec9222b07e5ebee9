import numpy as np
from PIL import Image

from models.attention import fuse_topk, overlay


def test_topk_fusion_picks_the_heads_that_look_at_the_image():
    L, H, A, N = 3, 2, 4, 16
    att = np.zeros((L, H, A, N))
    att[:, :, :, :] = 0.01  # little image mass everywhere
    att[2, 1, :, 5] = 0.9  # strongest head looks at patch 5
    att[0, 0, :, 9] = 0.5  # second strongest at patch 9
    fused, chosen = fuse_topk(att, top_k=2)
    assert chosen == [(2, 1), (0, 0)]
    expected = (att[2, 1].mean(0) + att[0, 0].mean(0)) / 2
    np.testing.assert_allclose(fused, expected / expected.sum())
    assert fused.argmax() == 5 and abs(fused.sum() - 1) < 1e-9


def test_overlay_keeps_the_image_size():
    img = np.zeros((224, 224, 3), np.uint8)
    heat = np.zeros((16, 16))
    heat[0, 0] = 1
    out = overlay(img, heat, 0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out[:14, :14].sum() > out[-14:, -14:].sum()  # hot corner stays where it was
    Image.fromarray(out)  # a valid image


def test_object_mass_is_one_inside_the_box_and_zero_outside():
    from models.attention import box_coverage, object_mass

    cov = box_coverage([[0, 0, 55.9, 27.9]], height=224, width=224, grid=16)  # patches of 14 px: 4 x 2 patches fully covered
    assert cov.shape == (16, 16) and abs(cov.sum() - 8) < 0.3
    inside = np.zeros((16, 16))
    inside[0, 0] = inside[1, 3] = 0.5
    outside = np.zeros((16, 16))
    outside[10, 10] = 1.0
    assert object_mass(inside, cov) == 1.0 and object_mass(outside, cov) == 0.0
    assert abs(object_mass(np.full((16, 16), 1 / 256), cov) - cov.mean()) < 1e-9  # uniform attention scores the covered share


def test_hooked_extraction_equals_the_models_own_attention_and_hand_set_attention(checkpoint, reasoning_dirs):
    import torch

    from data.training import StepSamples, split_dirs
    from models.attention import attention_rows, fuse_topk
    from models.spatialvla.policy import load_checkpoint

    model, proc = load_checkpoint(checkpoint)
    batch = proc.collate([StepSamples(split_dirs(reasoning_dirs, "val"), proc.action_chunk_size, proc.training_sample)[0]])
    ids = batch["input_ids"][0]
    image = (ids == proc.image_token_index).nonzero()[:, 0].tolist()
    queries = list(range(len(ids) - 13, len(ids) - 1))
    rows = attention_rows(model, batch, queries, image)
    model.language_model.set_attn_implementation("eager")
    with torch.no_grad():
        full = model(**proc.model_inputs(batch), output_attentions=True).attentions
    np.testing.assert_allclose(rows, torch.stack([a[0][:, queries][:, :, image] for a in full]).numpy(), atol=1e-6)
    # Hand-set: zero query projections make every score equal, so each query spreads its attention evenly
    # over the keys it may see; the image's 256 patches then get equal shares and the fused map is flat.
    for layer in model.language_model.model.layers:
        layer.self_attn.q_proj.weight.data.zero_()
        if layer.self_attn.q_proj.bias is not None:
            layer.self_attn.q_proj.bias.data.zero_()
    att = attention_rows(model, batch, queries, image)
    visible = batch["attention_mask"][0].sum().item()
    for i, q in enumerate(queries):  # causal over the unpadded sequence: q+1 visible keys (no padding in a batch of one)
        np.testing.assert_allclose(att[:, :, i], 1.0 / (q + 1), rtol=1e-4)
    fused, _ = fuse_topk(att, top_k=3)
    np.testing.assert_allclose(fused, np.full(len(image), 1 / len(image)), rtol=1e-5)
    assert visible == len(ids)
