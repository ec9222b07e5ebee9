"""Latency per action chunk: reason-then-act vs action-only, batch 1 and batch B, with the KV cache.

    .venv/bin/python bench/inference.py [--shape tiny|4b] [--batch 8] [--reasoning 244] [--repeats 3]

Builds the shape with random weights (no download): tiny in fp32 on CPU, 4b in bf16 on a CUDA GPU. Runs
`generate_actions` (greedy, KV cache) on random images with a SpatialVLA prompt (256 image tokens, <bos>, a short
instruction) and prints milliseconds per call and per action chunk for: action-only (12 action tokens) and
reason-then-act (a trace of exactly `--reasoning` tokens, then 12 action tokens: the trace is forced to full length
by masking eos and action ids while it runs, so both shapes time the same work).
"""

from __future__ import annotations

import argparse
import sys
import time

from fixtures import VOCAB, student  # bench/fixtures.py (puts the project on sys.path)

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=["tiny", "4b"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reasoning", type=int, default=244)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if args.shape == "4b" and not cuda:
        sys.exit("the 4b shape needs a CUDA GPU (use --shape tiny on CPU)")
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    v = VOCAB[args.shape]
    model = student(args.shape, device).to(dtype).eval()
    begin, eos = v - 8194, 1
    # force the trace to its full length: no eos and no action id while reasoning (the timing then does not depend on
    # what random weights happen to emit)
    head = model.language_model.lm_head
    print(f"{torch.cuda.get_device_name() if cuda else 'CPU'}; shape {args.shape}; {dtype}; trace {args.reasoning} tokens")
    print(f"{'mode':>16} | {'batch':>5} | {'ms / call':>9} | {'ms / chunk':>10}")
    for batch in sorted({1, args.batch}):
        ids = torch.tensor([[v - 8195] * 256 + [2, 40, 41, 42, 43, 108]] * batch, device=device)
        px = torch.rand(batch, 3, 224, 224, device=device)
        k = torch.tensor([[218.3, 0, 111.8], [0, 291.0, 111.8], [0, 0, 1]], device=device).expand(batch, 3, 3)
        for mode, n in (("action-only", 0), ("reason-then-act", args.reasoning)):
            bias = torch.zeros(v, device=device, dtype=dtype)
            bias[begin:] = bias[eos] = -1e4 if n else 0.0
            hook = head.register_forward_hook(lambda m, i, o, b=bias, n=n: o + b if n else o)
            times = []
            for _ in range(args.repeats + 1):
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                model.generate_actions(ids, px, 4, eos, intrinsic=k, max_reasoning_tokens=n)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            hook.remove()
            best = min(times[1:]) * 1e3
            print(f"{mode:>16} | {batch:5d} | {best:9.1f} | {best / batch:10.1f}")


if __name__ == "__main__":
    main()
