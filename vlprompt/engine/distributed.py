"""Single large runs on several GPUs with torchrun + DistributedDataParallel semantics.

``torchrun --nproc_per_node=4 train.py ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
``init_distributed_from_env`` then joins the process group (NCCL on GPUs, gloo on CPU). The engine
shards training batches with a ``DistributedSampler`` (``DATALOADER.TRAIN_X.BATCH_SIZE`` is per
process, so the global batch is that times the world size), averages the gradients of the
*learnable* parameters only across processes (frozen CLIP weights are never communicated), and lets
rank 0 alone log, write tensorboard scalars, checkpoints and results.json. Evaluation runs on every
rank over the full test set (exact, no gather needed); only rank 0 prints it. Never implicit
DataParallel.
"""
import os
import sys

import torch
import torch.distributed as dist


def init_distributed_from_env():
    """Join the process group described by torchrun's env vars; returns ``(rank, world_size)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("VLPROMPT_DIST_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def silence_non_main_stdout():
    """Rank > 0 prints nothing (rank 0 logs for everyone)."""
    if dist.is_initialized() and dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")


def sync_learnable_parameters(modules):
    """Broadcast rank 0's learnable parameters and average their gradients after each backward.

    Works however the trainer steps its optimisers (one or several, by hand or through the
    engine), because the averaging is attached to each parameter's gradient accumulation.
    Returns the number of parameters synchronised.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0
    world = dist.get_world_size()
    seen = set()
    count = 0
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            with torch.no_grad():
                dist.broadcast(p.data, src=0)

            def _hook(param):
                if param.grad is not None:
                    dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                    param.grad.div_(world)

            p.register_post_accumulate_grad_hook(_hook)
            count += p.numel()
    return count
