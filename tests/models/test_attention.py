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
