"""Distributed setup: the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) or one process.

    d = DistContext(); d.init("cuda")        # NCCL on CUDA, gloo on CPU; no-op without torchrun
    d.sum_(t); d.all_ok(flag); d.gather_object(obj); d.destroy(sync=True)
"""
import contextlib
import os

import torch

from configurator import ConfigError


class DistContext:
    """torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK) or a single process."""

    def __init__(self):
        self.ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", 0)) if self.ddp else 0
        self.world = int(os.environ.get("WORLD_SIZE", 1)) if self.ddp else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0)) if self.ddp else 0
        self.master = self.rank == 0
        self.initialized = False
        self.coll_device = "cpu"     # where all_ok's flag tensor lives

    def pick_device(self, requested):
        """"auto" -> cuda | mps | cpu; "cuda" -> this rank's cuda:{LOCAL_RANK} under torchrun.
        ConfigError when CUDA is requested but absent."""
        dev = requested
        if dev == "auto":
            mps = getattr(torch.backends, "mps", None)
            dev = ("cuda" if torch.cuda.is_available() else
                   "mps" if mps is not None and mps.is_available() else "cpu")
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {dev!r} requested but CUDA is not available")
        return f"cuda:{self.local_rank}" if dev == "cuda" and self.ddp else dev

    def init(self, device_type):
        if not self.ddp:
            return
        import torch.distributed as dist
        if device_type == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.coll_device = f"cuda:{self.local_rank}"    # NCCL reduces CUDA tensors only
        backend = "nccl" if device_type == "cuda" else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restart not in ("", "0") and "MASTER_ADDR" in os.environ:
            # a group restarted by torchrun --max-restarts shares the agent's store with the
            # failed round, whose keys (peer addresses) are still there: gloo then connects to
            # a dead peer. Keys of this round get their own prefix.
            import datetime
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                  self.world, is_master=False,
                                  timeout=datetime.timedelta(seconds=600))
            store = dist.PrefixStore(f"train_gpt2/restart{restart}", store)
            dist.init_process_group(backend=backend, store=store, rank=self.rank,
                                    world_size=self.world)
        else:
            dist.init_process_group(backend=backend)
        self.initialized = True

    def destroy(self, sync=False):
        """Tear the process group down. sync=True (normal exit on every rank) first waits for
        all ranks: a gloo rank that tears down while a peer is still busy (rank 0 plotting) can
        die with SIGABRT at interpreter exit."""
        if self.initialized:
            import torch.distributed as dist
            if dist.is_initialized():
                if sync:
                    try:
                        if dist.get_backend() == "gloo":
                            import datetime
                            dist.monitored_barrier(timeout=datetime.timedelta(seconds=300))
                        else:
                            dist.barrier()
                    except Exception:   # a peer is gone: nothing left to wait for
                        pass
                dist.destroy_process_group()
            self.initialized = False

    def sum_(self, t):
        """In-place all_reduce SUM (no-op single process)."""
        if self.initialized:
            import torch.distributed as dist
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def max_(self, value, device=None):
        """The largest int any rank passes (a barrier; value itself single process)."""
        if not self.initialized:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.int64,
                         device=device if str(device).startswith("cuda") else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def all_ok(self, ok, device=None):
        """True when every rank passes ok=1 (also a barrier)."""
        if not self.initialized:
            return bool(ok)
        t = torch.tensor([0 if ok else 1], dtype=torch.int64, device=device or self.coll_device)
        return int(self.sum_(t).item()) == 0

    def mean_by_name(self, sums):
        """{name: tensor} of per-rank sums -> {name: float or (nested) list} averaged over the
        ranks, in one all_reduce (names sorted, so every rank packs them alike)."""
        names = sorted(sums)
        flat = torch.cat([sums[k].reshape(-1) for k in names])
        flat = (self.sum_(flat) / self.world).cpu()
        out, i = {}, 0
        for k in names:
            n = sums[k].numel()
            v = flat[i:i + n].view(sums[k].shape)
            out[k] = v.item() if v.dim() == 0 else v.tolist()
            i += n
        return out

    def gather_object(self, obj):
        if not self.initialized:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


# ----------------------------------------------------------------------------------------------
# data parallelism: DDP (replicated) or FSDP2 (sharded) over the ranks

PARALLEL = ("ddp", "fsdp")


def wrap(raw, parallel, d, device, dtype):
    """The training module: raw itself (one process), DDP(raw), or raw sharded in place by
    FSDP2's fully_shard. Call before building the optimizer (FSDP turns the parameters into
    DTensor shards, which the optimizer must hold).

    FSDP: one unit per stored block, then the root (embedding, tied lm_head, ln_f). A shared
    block is one unit applied n_layer times, so it stays unsharded from its first call to the
    end of the step (reshard_after_forward=False): one all-gather per step instead of one per
    depth in the forward and again in the backward. Unshared blocks reshard after each forward
    (the memory saving). bf16 on CUDA: parameters cast to bf16 for compute, gradients reduced
    in fp32."""
    if not d.initialized:
        return raw
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(raw, device_ids=[d.local_rank] if device.startswith("cuda") else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy()
    if dtype == "bfloat16" and device.startswith("cuda"):
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for blk in raw.transformer.h:
        fully_shard(blk, mp_policy=mp, reshard_after_forward=reshard_blocks(raw))
    fully_shard(raw, mp_policy=mp)
    return raw


def reshard_blocks(raw):
    """FSDP reshard_after_forward of the block units: not for the one shared block."""
    return not raw.config.share_weights


def is_fsdp(model):
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def set_grad_sync(model, sync):
    """Gradient accumulation: reduce (DDP all-reduce / FSDP reduce-scatter) only when sync."""
    if is_fsdp(model):
        model.set_requires_gradient_sync(sync)
    elif hasattr(model, "require_backward_grad_sync"):      # DDP
        model.require_backward_grad_sync = sync


def full(t):
    """A DTensor shard -> the whole tensor (a collective: every rank calls it); else t."""
    from torch.distributed.tensor import DTensor
    return t.full_tensor() if isinstance(t, DTensor) else t


def local(t):
    """A DTensor -> this rank's shard (no communication); else t."""
    from torch.distributed.tensor import DTensor
    return t.to_local() if isinstance(t, DTensor) else t


def full_state(model, optimizer):
    """(model state dict, optimizer state dict) whole and on the CPU, in the format of a
    single-process run (what checkpoints hold, whatever the mode and world size). Under FSDP
    every rank must call it (each shard is gathered)."""
    msd = {k: full(v).detach().cpu() for k, v in model.state_dict().items()}
    osd = optimizer.state_dict()
    state = {pid: {k: (full(v).detach().cpu() if torch.is_tensor(v) else v) for k, v in st.items()}
             for pid, st in osd["state"].items()}
    return msd, {"state": state, "param_groups": osd["param_groups"]}


def load_optimizer_state(optimizer, sd):
    """Load a whole (single-process format) optimizer state dict; under FSDP each state tensor
    is cut to the shard of its parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if any(isinstance(p, DTensor) for p in params):
        state = {}
        for pid, st in sd["state"].items():
            p = params[int(pid)]
            state[pid] = {k: (distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                              if torch.is_tensor(v) and v.dim() > 0 and isinstance(p, DTensor) else v)
                          for k, v in st.items()}
        sd = {"state": state, "param_groups": sd["param_groups"]}
    optimizer.load_state_dict(sd)


@contextlib.contextmanager
def gathered(model):
    """Whole parameters on every rank for the duration (FSDP: all-gather every unit once and
    keep it), so evaluation, HellaSwag and sampling run per rank with no collective inside the
    forward: ranks may then do different amounts of work (sampling on rank 0, uneven example
    splits, early exit). Every rank must enter it. No-op for DDP / one process."""
    if not is_fsdp(model):
        yield
        return
    blocks = list(model.transformer.h)            # the root is never resharded after forward
    for m in blocks:
        m.set_reshard_after_forward(False, recurse=False)
    for m in blocks + [model]:
        m.unshard()
    try:
        yield
    finally:
        for m in blocks + [model]:
            m.reshard()
        for m in blocks:
            m.set_reshard_after_forward(reshard_blocks(model), recurse=False)
