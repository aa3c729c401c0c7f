"""FP8 matmuls for the frozen base layers of a LoRA student (`finetune.base_precision: fp8`).

LoRA trains only its adapters; the base layers' weights never change. So each base layer's
weight is quantized to float8 (e4m3) once, in the two layouts its two matmuls need, with one
scale per row: the forward product `x @ W^T` and, in the backward pass, the gradient to the
inputs `g @ W`. The activations and the incoming gradient are quantized on the fly, one scale
per row (token), and the products run on Hopper's FP8 tensor cores through
`torch._scaled_mm`, accumulating in higher precision and writing bfloat16. No gradient is
computed for the frozen weight (a generic float8 training layer would compute one, a third of
the layer's work, and throw it away). The adapters stay in bfloat16/float32 beside it.

Only Hopper GPUs (compute capability 9.0: H100, H200) run it; `check_fp8_hardware` refuses
anything else before training starts. On other devices the same arithmetic is done by
dequantizing, so the module can be tested on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3 value
# _scaled_mm wants every dimension of its operands to be a multiple of 16.
FP8_MULTIPLE = 16


def check_fp8_hardware() -> None:
    """Raise RuntimeError unless a Hopper GPU (compute capability 9.x) is visible."""
    if not torch.cuda.is_available():
        raise RuntimeError("finetune.base_precision fp8 needs a Hopper GPU (H100/H200, compute capability 9.0); "
                           "this machine has no CUDA GPU: use base_precision: default")
    major, minor = torch.cuda.get_device_capability()
    if major != 9:
        raise RuntimeError(f"finetune.base_precision fp8 needs a Hopper GPU (compute capability 9.0); this GPU "
                           f"({torch.cuda.get_device_name()}) has {major}.{minor}: use base_precision: default")


def quantize_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`tensor` (2-D) as e4m3 with one float32 scale per row (shape rows x 1): row / scale fits e4m3."""
    amax = tensor.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    quantized = (tensor.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return quantized, scale


def fp8_matmul(a: torch.Tensor, a_scale: torch.Tensor, b_t: torch.Tensor, b_scale: torch.Tensor,
               out_dtype: torch.dtype, fast_accum: bool) -> torch.Tensor:
    """(a * a_scale) @ (b_t * b_scale).T, for `a` (M x K) and `b_t` (N x K) quantized by rows."""
    if a.is_cuda:
        return torch._scaled_mm(a, b_t.t(), scale_a=a_scale, scale_b=b_scale.t(), out_dtype=out_dtype,
                                use_fast_accum=fast_accum)
    return ((a.float() * a_scale) @ (b_t.float() * b_scale).t()).to(out_dtype)


class _FrozenFp8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, w_t: torch.Tensor,
                w_t_scale: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        xq, x_scale = quantize_rows(rows)
        out = fp8_matmul(xq, x_scale, w, w_scale, x.dtype, fast_accum=True)
        ctx.save_for_backward(w_t, w_t_scale)
        ctx.input_shape = shape
        return out.reshape(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        w_t, w_t_scale = ctx.saved_tensors
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        gq, g_scale = quantize_rows(rows)
        grad_in = fp8_matmul(gq, g_scale, w_t, w_t_scale, grad_out.dtype, fast_accum=False)
        return grad_in.reshape(ctx.input_shape), None, None, None, None


class FrozenFp8Linear(nn.Module):
    """A frozen linear layer whose weight is kept only as float8 (two layouts, per-row scales):
    forward and the gradient to its input run in FP8; the weight gets no gradient."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w, w_scale = quantize_rows(weight)
        w_t, w_t_scale = quantize_rows(weight.t().contiguous())
        self.register_buffer("w", w)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_t", w_t)
        self.register_buffer("w_t_scale", w_t_scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.compute_dtype = weight.dtype

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (for code that inspects it; training never uses it)."""
        return (self.w.float() * self.w_scale).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.compute_dtype:
            x = x.to(self.compute_dtype)
        out = _FrozenFp8Matmul.apply(x, self.w, self.w_scale, self.w_t, self.w_t_scale)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 rowwise"


def fits_fp8(linear: nn.Linear) -> bool:
    """Whether `_scaled_mm` can take this layer's shapes."""
    return linear.in_features % FP8_MULTIPLE == 0 and linear.out_features % FP8_MULTIPLE == 0


def convert_lora_bases_to_fp8(model: Any) -> int:
    """Swap the frozen base layer of every LoRA-wrapped linear layer for a FrozenFp8Linear (the
    adapters and everything else stay as they are); return how many were swapped."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    swapped = 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(module, BaseTunerLayer) and type(base) is nn.Linear and fits_fp8(base):
            if base.weight.requires_grad:
                raise RuntimeError("finetune.base_precision fp8 applies to frozen base layers (LoRA) only")
            module.base_layer = FrozenFp8Linear(base)
            swapped += 1
    if not swapped:
        raise RuntimeError("finetune.base_precision fp8: found no LoRA-wrapped linear layer to run in FP8")
    return swapped
