"""Process-group set-up from torchrun's environment, rank helpers, SyncBatchNorm and metric reduction.

Under ``torchrun`` the variables RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT) are set; without them the
run is a single process and every helper degrades to the trivial answer. The backend is gloo on CPU and nccl
on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistributedContext:
    """Joins the process group torchrun describes (if any) and picks this process's device.

    Args:
        device: "auto" (CUDA when available, one GPU per local rank), "cpu" or "cuda".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=target)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes with its gradient: every process's output depends on every input, so the gradient
    reaching an input is the sum of the upstream gradients of all processes."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        result = tensor.clone()
        dist.all_reduce(result)
        return result

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of `tensor` over all processes."""
    return _AllReduceSum.apply(tensor)


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batch of every process (SyncBatchNorm for CPU/gloo).

    PyTorch's `nn.SyncBatchNorm` runs only on GPUs; this layer uses differentiable all-reduces instead, so that N
    CPU processes with batch B normalise (and back-propagate) exactly like one process with batch N * B. Mean and
    variance are computed in two passes (sum, then sum of squared deviations) in float32, like the native kernel.
    Outside training, or in a single process, it is a plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        x32 = x.float()
        channels = x32.shape[1]
        count = torch.tensor([x32.numel() // channels], dtype=torch.float32, device=x32.device)
        total = all_reduce_sum(torch.cat([x32.sum(dim=(0, 2, 3)), count]))
        n = total[-1]
        mean = total[:channels] / n
        centred = x32 - mean[None, :, None, None]
        var = all_reduce_sum(centred.square().sum(dim=(0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / torch.clamp(n - 1, min=1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def _to_cross_process_bn(module: nn.Module) -> nn.Module:
    result = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CrossProcessBatchNorm2d):
        result = CrossProcessBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                         module.track_running_stats)
        tensors = list(module.state_dict().values())
        if tensors:
            result.to(tensors[0].device)
        result.load_state_dict(module.state_dict())
        result.train(module.training)
        if module.affine:
            result.weight.requires_grad_(module.weight.requires_grad)
            result.bias.requires_grad_(module.bias.requires_grad)
    for name, child in module.named_children():
        result.add_module(name, _to_cross_process_bn(child))
    return result


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm layers -> synchronised ones when running distributed (a no-op for one process).

    Done at the entry point, not inside layers, so models stay plain. Synchronised statistics cover the global
    batch, which is what makes N processes with batch B train like one process with batch N * B. CUDA models get
    `nn.SyncBatchNorm`; CPU models (gloo) get `CrossProcessBatchNorm2d`. Convert *before* building the optimiser
    or load its parameters again: the CPU conversion creates new parameter tensors.
    """
    if not is_distributed():
        return model
    parameter = next(iter(model.parameters()), None)
    if parameter is not None and parameter.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_cross_process_bn(model)


def reduce_mean(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Averages scalar metrics over processes (for logging); returns Python floats."""
    names = list(values)
    tensor = torch.tensor([float(values[name]) for name in names], dtype=torch.float64)
    if is_distributed():
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return dict(zip(names, tensor.cpu().tolist()))


def all_gather_objects(value: object) -> list[object]:
    """Every process's `value`, in rank order (a one-element list for one process)."""
    if not is_distributed():
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: object, src: int = 0) -> object:
    """`value` from process `src` on every process."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]
