"""FP8 GEMMs of the 7B student's shapes on one GPU: bf16 against FP8 with one scale per row and one
per tensor, and the cost of quantizing the activations each way: the torch expressions compiled
(as in training) and the one-read Triton row quantizer, checked bit for bit against them.

Usage (a Hopper GPU): python3 -m bench.bench_fp8_gemm
Prints one line per shape: milliseconds and TFLOP/s of each product, and of each quantization.
"""

from __future__ import annotations

import torch
from triton.testing import do_bench

from finetune.fp8 import fp8_matmul, quantize_rows, quantize_rows_fused, quantize_tensor

ROWS = 7 * 2048  # the recommended batch of 7 rows of 2,048 tokens
# (in, out) of the Llama-2-7B linear layers: q/k/v/o, gate/up, down; and the backward's g @ W
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]


def main() -> None:
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    rowwise, tensorwise = torch.compile(quantize_rows), torch.compile(quantize_tensor)
    for k, n in SHAPES:
        x = torch.randn(ROWS, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        flops = 2 * ROWS * k * n
        line = [f"{ROWS}x{k} @ {k}x{n}:"]
        ms = do_bench(lambda: x @ w.t())
        line.append(f"bf16 {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s")
        for name, quantize in (("rowwise", rowwise), ("tensorwise", tensorwise)):
            xq, xs = quantize(x)
            wq, ws = quantize(w)
            ms = do_bench(lambda: fp8_matmul(xq, xs, wq, ws, torch.bfloat16, fast_accum=True))
            qms = do_bench(lambda: quantize(x))
            line.append(f"{name} {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s + quantize {qms:.3f} ms")
        fq, fs = quantize_rows_fused(x)
        tq, ts = rowwise(x)
        same = torch.equal(fs, ts) and torch.equal(fq.view(torch.uint8), tq.view(torch.uint8))
        ms = do_bench(lambda: quantize_rows_fused(x))
        moved = x.numel() * (x.element_size() + 1)  # one read of the row, one e4m3 write
        line.append(f"Triton rows quantize {ms:.3f} ms ({moved / ms / 1e6:.0f} GB/s), equal to torch's: {same}")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
