"""FP8 matmuls for the frozen base layers of a LoRA student (`finetune.base_precision: fp8`).

LoRA trains only its adapters; the base layers' weights never change. So each base layer's
weight is quantized to float8 (e4m3) once, in the two layouts its two matmuls need: the
forward product `x @ W^T` and, in the backward pass, the gradient to the inputs `g @ W`. The
activations and the incoming gradient are quantized on the fly, and the products run on
Hopper's FP8 tensor cores through `torch._scaled_mm`, accumulating in higher precision and
writing bfloat16. Two scalings (`finetune.fp8_scaling`): `rowwise` keeps one scale per row of
every operand (per token for activations and gradients: an outlier token costs only its own
row's precision); `tensorwise` keeps one scale per tensor (gradients in e5m2, for range), which
cuBLAS's FP8 GEMM takes directly (torch runs rowwise scales through a CUTLASS kernel). No gradient is
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
# Gradients scaled as a whole use e5m2 (torchao's tensorwise recipe does the same): two more bits of
# exponent range for values spread over many magnitudes under one scale, one bit less of mantissa.
FP8_GRADIENT = torch.float8_e5m2
FP8_GRADIENT_MAX = 57344.0  # largest finite e5m2 value
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


def _row_quantizer_kernel():
    """A Triton kernel that quantizes each row in one read (the row stays in registers between its
    maximum and its scaling), or None where Triton is missing. Compiled, the torch expression above
    reads rows as wide as the MLP's (11,008) twice, at about a third of the memory bandwidth."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, columns, x_stride, q_stride, LARGEST: tl.constexpr,
                             BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offsets = tl.arange(0, BLOCK)
        inside = offsets < columns
        values = tl.load(x_ptr + row * x_stride + offsets, mask=inside, other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(values), axis=0), 1e-12)
        scale = tl.math.div_rn(amax, LARGEST)
        scaled = tl.clamp(tl.math.div_rn(values, scale), -LARGEST, LARGEST)
        tl.store(q_ptr + row * q_stride + offsets, scaled.to(tl.float8e4nv), mask=inside)
        tl.store(scale_ptr + row, scale)

    return quantize_rows_kernel


_ROW_KERNEL = _row_quantizer_kernel()


def quantize_rows_fused(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same numbers as `quantize_rows` (IEEE division, the same clamps and rounding), on a CUDA
    tensor of 2-D rows through the one-read Triton kernel; elsewhere `quantize_rows` itself."""
    if _ROW_KERNEL is None or not tensor.is_cuda or tensor.dim() != 2 or tensor.stride(-1) != 1:
        return quantize_rows(tensor)
    rows, columns = tensor.shape
    quantized = torch.empty((rows, columns), dtype=FP8, device=tensor.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=tensor.device)
    block = 1 << max(columns - 1, 1).bit_length()
    _ROW_KERNEL[(rows,)](tensor, quantized, scale, columns, tensor.stride(0), quantized.stride(0), LARGEST=FP8_MAX,
                         BLOCK=block, num_warps=16 if block >= 8192 else 8)
    return quantized, scale


def quantize_tensor(tensor: torch.Tensor, fmt: torch.dtype = FP8) -> tuple[torch.Tensor, torch.Tensor]:
    """`tensor` as `fmt` (e4m3, or e5m2 for gradients) with one float32 scale for the whole tensor (0-d)."""
    largest = FP8_MAX if fmt == FP8 else FP8_GRADIENT_MAX
    amax = tensor.abs().amax().float().clamp(min=1e-12)
    scale = amax / largest
    quantized = (tensor.float() / scale).clamp(-largest, largest).to(fmt)
    return quantized, scale


def quantize_gradient_tensor(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_tensor(tensor, FP8_GRADIENT)


# scaling -> (quantizer of weights and activations, quantizer of incoming gradients)
SCALINGS = {"rowwise": (quantize_rows_fused, quantize_rows_fused),
            "tensorwise": (quantize_tensor, quantize_gradient_tensor)}


def fp8_matmul(a: torch.Tensor, a_scale: torch.Tensor, b_t: torch.Tensor, b_scale: torch.Tensor,
               out_dtype: torch.dtype, fast_accum: bool) -> torch.Tensor:
    """(a * a_scale) @ (b_t * b_scale).T, for `a` (M x K) and `b_t` (N x K) quantized by rows (scales M x 1
    and N x 1) or whole (0-d scales)."""
    if a.is_cuda:
        return torch._scaled_mm(a, b_t.t(), scale_a=a_scale, scale_b=b_scale.t(), out_dtype=out_dtype,
                                use_fast_accum=fast_accum)
    return ((a.float() * a_scale) @ (b_t.float() * b_scale).t()).to(out_dtype)


class _FrozenFp8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, w_t: torch.Tensor,
                w_t_scale: torch.Tensor, scaling: str) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        xq, x_scale = SCALINGS[scaling][0](rows)
        out = fp8_matmul(xq, x_scale, w, w_scale, x.dtype, fast_accum=True)
        ctx.save_for_backward(w_t, w_t_scale)
        ctx.input_shape = shape
        ctx.scaling = scaling
        return out.reshape(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        w_t, w_t_scale = ctx.saved_tensors
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        gq, g_scale = SCALINGS[ctx.scaling][1](rows)
        grad_in = fp8_matmul(gq, g_scale, w_t, w_t_scale, grad_out.dtype, fast_accum=False)
        return grad_in.reshape(ctx.input_shape), None, None, None, None, None


class FrozenFp8Linear(nn.Module):
    """A frozen linear layer whose weight is kept only as float8 (two layouts, scaled by rows or as a
    whole): forward and the gradient to its input run in FP8; the weight gets no gradient."""

    def __init__(self, linear: nn.Linear, scaling: str = "rowwise"):
        super().__init__()
        if scaling not in SCALINGS:
            raise ValueError(f"fp8 scaling must be one of {sorted(SCALINGS)}, not {scaling!r}")
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.scaling = scaling
        quantize = SCALINGS[scaling][0]
        w, w_scale = quantize(weight)
        w_t, w_t_scale = quantize(weight.t().contiguous())
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
        out = _FrozenFp8Matmul.apply(x, self.w, self.w_scale, self.w_t, self.w_t_scale, self.scaling)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 {self.scaling}"


def fits_fp8(linear: nn.Linear) -> bool:
    """Whether `_scaled_mm` can take this layer's shapes."""
    return linear.in_features % FP8_MULTIPLE == 0 and linear.out_features % FP8_MULTIPLE == 0


def convert_lora_bases_to_fp8(model: Any, scaling: str = "rowwise") -> int:
    """Swap the frozen base layer of every LoRA-wrapped linear layer for a FrozenFp8Linear (the
    adapters and everything else stay as they are); return how many were swapped."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    swapped = 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(module, BaseTunerLayer) and type(base) is nn.Linear and fits_fp8(base):
            if base.weight.requires_grad:
                raise RuntimeError("finetune.base_precision fp8 applies to frozen base layers (LoRA) only")
            module.base_layer = FrozenFp8Linear(base, scaling)
            swapped += 1
    if not swapped:
        raise RuntimeError("finetune.base_precision fp8: found no LoRA-wrapped linear layer to run in FP8")
    return swapped
