"""Distributed setup: the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) or one process.

    d = DistContext(); d.init("cuda")        # NCCL on CUDA, gloo on CPU; no-op without torchrun
    d.sum_(t); d.all_ok(flag); d.gather_object(obj); d.destroy(sync=True)
"""
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

    def gather_object(self, obj):
        if not self.initialized:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out
