"""Memory and speed of one training step: full fine-tuning vs LoRA, on the tiny or the 4 B shape.

    .venv/bin/python bench/train_step.py [--shape 4b] [--batch 8] [--steps 3] [--freeze-layers 12]

On a CUDA GPU: builds the shape with random weights (no download), runs `--steps` optimizer steps of the
real objective on random images and a sequence of SpatialVLA's length (256 image tokens, a prompt, 244
reasoning tokens, 12 action tokens, <eos>), bf16 autocast as in fine-tuning, and prints peak GPU memory
(`torch.cuda.max_memory_allocated`) and seconds per step for: full (vision + first N layers frozen), full
with gradient checkpointing, LoRA r=32, LoRA with gradient checkpointing.
samples/s, tokens/s and MFU are printed beside them. On CPU with `--shape tiny`: samples/s, tokens/s and peak RSS of
full fine-tuning steps. Without a GPU and `--shape 4b`: counts the parameters on the meta device and prints the memory that weights, gradients and
AdamW states take in each setting (a floor: activations come on top), labelled as an estimate.
"""

from __future__ import annotations

import argparse
import time

from fixtures import VOCAB, student  # bench/fixtures.py (puts the project on sys.path)

def settings(model, freeze_layers: int, lora: bool):
    from models.lora import DEFAULT_TARGETS, apply_lora
    from models.objective import apply_freezing, freeze_filters

    filters = freeze_filters(True, True, freeze_layers)
    if lora:
        return apply_lora(model, 32, 32.0, 0.0, DEFAULT_TARGETS, filters)[0]
    apply_freezing(model, filters)
    return model


def estimate(args) -> None:
    model = student(args.shape, "meta")
    print(f"no CUDA GPU: estimates from parameter counts of the {args.shape} shape (weights fp32 as trained, AdamW 2 fp32 states,")
    print("fp32 gradients; activations not included, they grow with batch × sequence length)")
    print(f"{'setting':>28} | {'params M':>8} | {'trainable M':>11} | {'weights GB':>10} | {'grads+Adam GB':>13} | {'floor GB':>8}")
    for name, lora in (("full, vision+N layers frozen", False), ("LoRA r=32", True)):
        m = settings(student(args.shape, "meta"), args.freeze_layers, lora)
        total = sum(p.numel() for p in m.parameters())
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        w, opt = total * 4 / 1e9, trainable * (4 + 8) / 1e9
        print(f"{name:>28} | {total / 1e6:8.1f} | {trainable / 1e6:11.1f} | {w:10.2f} | {opt:13.2f} | {w + opt:8.2f}")
    del model


def measure(args) -> None:
    import torch

    from models.objective import refinevla_loss

    seq = 256 + 24 + 244 + 13
    print(f"{torch.cuda.get_device_name()}; shape {args.shape}; batch {args.batch}; sequence {seq}; bf16 autocast")
    from tasks.finetune import PEAK_BF16_FLOPS

    name_gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name_gpu), None)
    print(f"{'setting':>30} | {'peak GB':>8} | {'s/step':>7} | {'samples/s':>9} | {'tokens/s':>9} | {'MFU':>5}")
    for name, lora, ckpt in (("full", False, False), ("full + grad. checkpointing", False, True), ("LoRA r=32", True, False),
                             ("LoRA r=32 + grad. checkpointing", True, True)):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = settings(student(args.shape, "cuda"), args.freeze_layers, lora)
        if ckpt:
            (model.get_base_model() if lora else model).language_model.gradient_checkpointing_enable()
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        ids = torch.randint(0, 1000, (args.batch, seq), device="cuda")
        ids[:, :256] = VOCAB[args.shape] - 8195  # <image>
        kinds = torch.zeros_like(ids)
        kinds[:, 280:-13], kinds[:, -13:] = 1, 2
        labels = torch.where(kinds > 0, ids, -100)
        pixels = torch.rand(args.batch, 3, 224, 224, device="cuda")
        intrinsic = torch.tensor([[218.26, 0, 111.8], [0, 291.0, 111.8], [0, 0, 1]], device="cuda").expand(args.batch, 3, 3)
        types = (kinds > 0).long()
        times = []
        for _ in range(args.steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(input_ids=ids, pixel_values=pixels, intrinsic=intrinsic, attention_mask=torch.ones_like(ids), token_type_ids=types,
                            logits_to_keep=seq - 280 + 1)
            refinevla_loss(out.logits, labels, kinds, 0.5).total.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        dt = min(times)
        n_total = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        tok = args.batch * seq / dt
        mfu = f"{(4 * n_total + 2 * n_train) * tok / peak:5.2f}" if peak else "  n/a"
        print(f"{name:>30} | {torch.cuda.max_memory_allocated() / 1e9:8.1f} | {dt:7.2f} | {args.batch / dt:9.1f} | {tok:9.0f} | {mfu}")
        del model, opt, out
    print("bf16 weights instead of fp32 master weights, or an 8-bit optimizer (--finetune.optimizer adamw8bit), lower these further.")


def measure_cpu(args) -> None:
    """The tiny shape on CPU, fp32: samples/s, tokens/s and peak resident memory of full fine-tuning steps."""
    import resource

    import torch

    from models.objective import refinevla_loss

    seq = 256 + 24 + 64 + 13  # the demo keeps up to 64 reasoning tokens in tests; 244 in the paper
    model = settings(student("tiny", "cpu"), min(args.freeze_layers, 1), False).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, 1000, (args.batch, seq))
    ids[:, :256] = VOCAB["tiny"] - 8195
    kinds = torch.zeros_like(ids)
    kinds[:, 280:-13], kinds[:, -13:] = 1, 2
    labels = torch.where(kinds > 0, ids, -100)
    pixels = torch.rand(args.batch, 3, 224, 224)
    intrinsic = torch.tensor([[218.26, 0, 111.8], [0, 291.0, 111.8], [0, 0, 1]]).expand(args.batch, 3, 3)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        out = model(input_ids=ids, pixel_values=pixels, intrinsic=intrinsic, attention_mask=torch.ones_like(ids), token_type_ids=(kinds > 0).long(),
                    logits_to_keep=seq - 280 + 1)
        refinevla_loss(out.logits, labels, kinds, 0.5).total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    dt = min(times)
    print(f"CPU ({torch.get_num_threads()} threads); shape tiny; batch {args.batch}; sequence {seq}; fp32; MFU n/a (no CPU peak)")
    print(f"s/step {dt:.2f} | samples/s {args.batch / dt:.1f} | tokens/s {args.batch * seq / dt:.0f} | "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="4b", choices=["tiny", "4b"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--freeze-layers", type=int, default=12)
    args = ap.parse_args()
    import torch

    if torch.cuda.is_available():
        measure(args)
    elif args.shape == "tiny":
        measure_cpu(args)
    else:
        estimate(args)


if __name__ == "__main__":
    main()
