"""Writes spatialvla_tiny_447.json: a tiny checkpoint built with SpatialVLA's own code and its outputs.

Not run by the tests (they read the JSON). To regenerate, in an environment with transformers==4.47.0
(and tokenizers 0.21, huggingface_hub<1.0, torchvision, scipy) and a checkout of SpatialVLA's repository
(github.com/SpatialVLA/SpatialVLA: its `model/` package and `scripts/*.json`) on PYTHONPATH:

    python tests/models/data/make_reference_447.py OUT_DIR

The weights are reproducible: every tensor is drawn from a generator seeded with its on-disk name's rank
(`reference_tensor`, repeated in tests/models/test_checkpoint.py), so the test rebuilds the identical
checkpoint from the key list and compares our model's outputs with the numbers recorded here.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch


def reference_tensor(rank: int, shape: list[int]) -> torch.Tensor:
    """N(0, 0.05²) from torch's CPU generator seeded with the name's rank (stable across torch releases)."""
    return 0.05 * torch.randn(math.prod(shape), generator=torch.Generator().manual_seed(rank)).reshape(shape)


def reference_inputs() -> dict:
    B, img, begin = 2, 300, 301
    y, x = torch.meshgrid(torch.linspace(0, 1, 224), torch.linspace(0, 1, 224), indexing="ij")
    px = torch.stack([torch.stack([x, y, (x * y) ** 0.5]), torch.stack([1 - x, y * y, 0.5 + 0.4 * torch.sin(9 * x)])])
    K = torch.tensor([[623.588, 0, 319.5], [0, 623.588, 239.5], [0, 0, 1.0]])
    K[0] *= 224 / 640
    K[1] *= 224 / 480
    prompt = [img] * 256 + [2, 17, 45, 99, 108]
    suffixes = [[30, 31, 32] + [begin + 5, begin + 4100, begin + 8193] * 4 + [1], [begin + 700, begin + 5000, begin + 8192] * 4 + [1]]
    rows = [prompt + s for s in suffixes]
    L = max(map(len, rows))
    ids = torch.tensor([r + [0] * (L - len(r)) for r in rows])
    types = torch.tensor([[0] * len(prompt) + [1] * len(s) + [0] * (L - len(prompt) - len(s)) for s in suffixes])
    labels = torch.where(types == 1, ids, torch.full_like(ids, -100))
    return {"pixel_values": px, "intrinsic": K[None].repeat(B, 1, 1), "input_ids": ids, "token_type_ids": types, "labels": labels,
            "attention_mask": (ids != 0).long(), "prompt": torch.tensor([prompt] * B)}


def reference_actions() -> np.ndarray:
    """Normalised (n, 7) actions: a grid through [-1, 1] per axis, exact bin-range ends, and the gripper at 0 / 0.5 / 1."""
    g = np.random.default_rng(0)
    a = np.clip(g.normal(0, 0.5, (200, 7)), -1.2, 1.2)
    a[:8, :6] = np.array([-1.0, 1.0, 0.0, 0.999, -0.999, 1e-9, -1e-9, 0.5])[:, None]
    a[:, 6] = g.choice([0.0, 0.49, 0.5, 1.0], 200)
    return a


def tokenizer_reference(repo: Path) -> dict:
    """The authors' action tokenizer with the grid fitted from their scripts/gs_bridge.json: encode / decode."""
    from model.action_tokenizer import SpatialActionTokenizer
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    base = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}, unk_token="<unk>")))
    action_config = json.loads((repo / "scripts" / "action_config.json").read_text())
    gs = json.loads((repo / "scripts" / "gs_bridge.json").read_text())
    tok = SpatialActionTokenizer(base, num_bins=action_config["num_bins"], gs_params=gs, use_spherical=True)
    actions = reference_actions()
    ids = base.convert_tokens_to_ids(tok(actions).reshape(-1).tolist())
    begin = tok.action_token_begin_idx
    grid = (torch.tensor(ids).reshape(-1, 3) - begin).numpy()
    decoded = tok.decode_token_ids_to_actions(grid + begin)
    return {"bin_policy": tok.bin_policy, "grid_ids": grid.tolist(), "decoded": decoded.tolist()}


def main(out: str) -> None:
    from model.configuration_spatialvla import SpatialVLAConfig
    from model.modeling_spatialvla import SpatialVLAForConditionalGeneration
    from transformers import BeitConfig, ZoeDepthConfig

    V = 301 + 8194
    beit = BeitConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=384, patch_size=16,
                      use_relative_position_bias=True, reshape_hidden_states=False, out_features=["stage1", "stage2", "stage3", "stage4"])
    zoe = ZoeDepthConfig(backbone_config=beit.to_dict(), neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, bottleneck_features=16,
                         num_relative_features=8, bin_embedding_dim=16, bin_configurations=[{"n_bins": 8, "min_depth": 0.001, "max_depth": 10.0}],
                         num_attractors=[4, 2, 2, 1])
    cfg = SpatialVLAConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=14, image_size=224, vision_use_head=False),
        text_config=dict(model_type="gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=V, tie_word_embeddings=False, query_pre_attn_scalar=16),
        vision_zoe_config=zoe.to_dict(), image_token_index=300, vocab_size=V, projection_dim=64, hidden_size=64, action_token_begin_idx=301,
        spatial_token_num=8194, use_spatial_token=True, ego3d_patch_reso=2, n_freqs=8, use_vision_zoe=True, bos_token_id=2, eos_token_id=1,
        pad_token_id=0)
    model = SpatialVLAForConditionalGeneration(cfg)
    model.save_pretrained(out, safe_serialization=True)
    from safetensors.torch import load_file, save_file

    state = load_file(f"{out}/model.safetensors")
    names = sorted(state)
    state = {k: reference_tensor(i, list(state[k].shape)) for i, k in enumerate(names)}
    save_file(state, f"{out}/model.safetensors", metadata={"format": "pt"})
    model = SpatialVLAForConditionalGeneration.from_pretrained(out).eval()
    x = reference_inputs()
    with torch.no_grad():
        train = model(input_ids=x["input_ids"], pixel_values=x["pixel_values"], intrinsic=x["intrinsic"], attention_mask=x["attention_mask"],
                      token_type_ids=x["token_type_ids"], labels=x["labels"])
        p = x["prompt"]
        infer = model(input_ids=p, pixel_values=x["pixel_values"], intrinsic=x["intrinsic"], attention_mask=torch.ones_like(p))
        feats = model.get_image_features(x["pixel_values"], x["intrinsic"])
        gen = model.generate(input_ids=p, pixel_values=x["pixel_values"], intrinsic=x["intrinsic"], attention_mask=torch.ones_like(p),
                             max_new_tokens=12, do_sample=False)[:, p.shape[1]:]
    ref = {
        "config": json.loads(Path(f"{out}/config.json").read_text()),
        "keys": {k: list(v.shape) for k, v in sorted(state.items())},
        "train_loss": train.loss.item(),
        "train_logits_last_labelled": train.logits[:, -3, :64].tolist(),
        "infer_logits_last": infer.logits[:, -1, :64].tolist(),
        "infer_argmax": infer.logits[:, -1].argmax(-1).tolist(),
        "image_features_sum": feats.double().sum().item(),
        "image_features_head": feats[:, :3, :8].tolist(),
        "generated": gen.tolist(),
    }
    import model as their_model

    ref["action_tokenizer"] = tokenizer_reference(Path(their_model.__file__).resolve().parent.parent)
    Path(__file__).with_name("spatialvla_tiny_447.json").write_text(json.dumps(ref))
    print({k: v for k, v in ref.items() if k in ("train_loss", "infer_argmax", "generated", "image_features_sum")})


if __name__ == "__main__":
    main(sys.argv[1])
