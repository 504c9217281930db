"""Token batches for the trainer: memory-mapped fineweb.py shards -> (x, y) int64 (B, T).

    meta = prepare_data(cfg, dist)           # build the dataset if asked, validate its manifest
    loader = DataLoader(fineweb.shard_paths(meta, "train"), B, T, total_batch_size, rank, world, ...)
    x, y = loader.next_batch()
"""
import os

import numpy as np
import torch

import fineweb
from configurator import ConfigError


def to_device(x, y, device):
    """A CPU batch (x, y) on device. CUDA: through pinned (page-locked) memory with non_blocking
    copies, so the host-to-device copy runs asynchronously on the stream instead of the host
    staging it synchronously; elsewhere a plain copy (no-op on CPU)."""
    if str(device).startswith("cuda"):
        return (x.pin_memory().to(device, non_blocking=True),
                y.pin_memory().to(device, non_blocking=True))
    return x.to(device), y.to(device)


class DataLoader:
    """Memory-mapped uint16 shards -> (x, y) int64 micro batches (B, T).

    The unit is one optimizer step of `step_tokens` (= total_batch_size) consecutive tokens, a
    "block" at offset k * step_tokens of a shard. Within a block, micro step m of rank r reads
    tokens [(m * world + r) * B*T, ... + B*T + 1): ranks get disjoint slices, and 1 process with
    gradient accumulation sees exactly the tokens of N processes. A shard of n tokens holds
    ceil((n - 1) / step_tokens) blocks: the full ones, then one aligned to the shard's end (its
    last target is the shard's last token), so the tail is covered and no read passes the end;
    that last block repeats < step_tokens tokens of the one before it. shuffle permutes shard
    order and block order per epoch, seeded by (seed, epoch[, shard]). state_dict() is the
    position (at step boundaries).
    """

    def __init__(self, paths, B, T, step_tokens, rank, world, vocab_size, split,
                 shuffle=False, seed=0):
        self.load_tokens = fineweb.load_tokens
        self.B, self.T, self.rank, self.world = B, T, rank, world
        self.step_tokens, self.vocab_size, self.split = step_tokens, vocab_size, split
        self.shuffle, self.seed = shuffle, seed
        self.micro_steps = step_tokens // (B * T * world)
        self.paths = list(paths)
        sizes = [self.load_tokens(p).shape[0] for p in self.paths]
        self.sizes = sizes
        self.nblocks = [-(-(n - 1) // step_tokens) if n - 1 >= step_tokens else 0 for n in sizes]
        self.total_blocks = sum(self.nblocks)
        if self.total_blocks == 0:
            raise ConfigError(f"dataset smaller than one batch: the {split} split's largest shard "
                              f"has {max(sizes) if sizes else 0} tokens, one step needs "
                              f"total_batch_size + 1 = {step_tokens + 1}")
        self._checked = set()
        self.reset()

    def _shard_order(self):
        order = [i for i, n in enumerate(self.nblocks) if n > 0]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = [order[i] for i in rng.permutation(len(order))]
        return order

    def _block_order(self, shard):
        n = self.nblocks[shard]
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch, shard]).permutation(n)

    def block_start(self, shard, k):
        """Token offset of block k of a shard: k * step_tokens, the last block end-aligned."""
        return min(k * self.step_tokens, self.sizes[shard] - 1 - self.step_tokens)

    def _enter(self):
        self.order = self._shard_order()
        shard = self.order[self.shard_i]
        self.blocks = self._block_order(shard)
        self.tokens = self.load_tokens(self.paths[shard])
        if shard not in self._checked:     # token ids must fit the data's vocabulary
            top = int(self.tokens.max())
            if top >= self.vocab_size:
                raise fineweb.DataError(f"shard holds token id {top} >= vocab_size "
                                        f"{self.vocab_size}: {self.paths[shard]}")
            self._checked.add(shard)

    def reset(self):
        self.load_state_dict({"epoch": 0, "shard_i": 0, "block_i": 0, "micro": 0})

    def state_dict(self):
        return {"epoch": self.epoch, "shard_i": self.shard_i, "block_i": self.block_i,
                "micro": self.micro}

    def check_state(self, d):
        """ValueError unless state_dict() d is a position of this data (a checkpoint of a run on
        other, e.g. smaller, data is not)."""
        epoch, shard_i, block_i, micro = (int(d[k]) for k in ("epoch", "shard_i", "block_i", "micro"))
        saved, self.epoch = getattr(self, "epoch", 0), epoch
        order = self._shard_order()             # (the order depends on the epoch)
        self.epoch = saved
        where = os.path.dirname(self.paths[0]) if self.paths else "?"
        if not 0 <= shard_i < len(order):
            raise ValueError(f"its data position (shard {shard_i} of the {self.split} split) is "
                             f"beyond the {len(order)} usable shard(s) in {where}")
        n = self.nblocks[order[shard_i]]
        if not 0 <= block_i < n or not 0 <= micro < self.micro_steps:
            raise ValueError(f"its data position (block {block_i} of shard {shard_i}, micro step "
                             f"{micro}) is beyond that shard's {n} block(s) in {where}")

    def load_state_dict(self, d):
        self.check_state(d)
        self.epoch, self.shard_i = int(d["epoch"]), int(d["shard_i"])
        self.block_i, self.micro = int(d["block_i"]), int(d["micro"])
        self._enter()

    def next_batch(self):
        """(x, y) int64 (B, T) on CPU."""
        B, T = self.B, self.T
        start = self.block_start(self.order[self.shard_i], int(self.blocks[self.block_i]))
        start += (self.micro * self.world + self.rank) * B * T
        buf = torch.from_numpy(np.asarray(self.tokens[start:start + B * T + 1], dtype=np.int64))
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
        self.micro += 1
        if self.micro == self.micro_steps:
            self.micro = 0
            self.block_i += 1
            if self.block_i == len(self.blocks):
                self.block_i = 0
                self.shard_i += 1
                if self.shard_i == len(self.order):
                    self.shard_i = 0
                    self.epoch += 1
                self._enter()
        return x, y


def prepare_data(cfg, dist_ctx):
    """Build the dataset with fineweb.py when dataset_source is set and it is absent; then the
    validated manifest. Raises ConfigError / fineweb.DataError."""
    meta_path = os.path.join(cfg["dataset"], fineweb.MANIFEST)
    if cfg["dataset_source"] and not os.path.isfile(meta_path):
        err = None
        if dist_ctx.master:          # fineweb.py with the run's tokenizer; its error as ours
            argv = [f"--source={cfg['dataset_source']}", f"--out={cfg['dataset']}",
                    f"--tokenizer={cfg['tokenizer'] or 'gpt2'}"]
            try:
                args = fineweb.parse_args(argv)
                fineweb.make_source(args)         # a missing source path: before any output
                print(f"preparing {cfg['dataset']}: fineweb.py --source {cfg['dataset_source']}",
                      flush=True)
                fineweb.build(args)
            except (fineweb.DataError, fineweb.SourceReadError, ValueError, OSError) as e:
                err = f"could not build {cfg['dataset']} from dataset_source {cfg['dataset_source']!r}: {e}"
            except SystemExit:
                err = f"could not build {cfg['dataset']} from dataset_source {cfg['dataset_source']!r}"
        if not dist_ctx.all_ok(err is None):
            raise ConfigError(err or f"could not build {cfg['dataset']} (see rank 0)")
    meta = fineweb.read_manifest(cfg["dataset"])   # sizes/token counts: cheap, on every rank
    if cfg["verify_data"]:
        err = None
        if dist_ctx.master:
            try:
                fineweb.read_manifest(cfg["dataset"], check_sha=True)
            except fineweb.DataError as e:
                err = e
        if not dist_ctx.all_ok(err is None):
            raise err if err is not None else fineweb.DataError("data verification failed on rank 0")
    if cfg["tokenizer"] is not None and cfg["tokenizer"] != meta["tokenizer"]:
        raise ConfigError(f"tokenizer {cfg['tokenizer']!r} does not match the data's "
                          f"{meta['tokenizer']!r} ({meta_path})")
    if cfg["vocab_size"] is None:                  # unset: the data's
        cfg["vocab_size"] = fineweb.model_vocab_size(meta)
    if int(meta["vocab_size"]) > cfg["vocab_size"]:
        raise ConfigError(f"data vocab_size {meta['vocab_size']} > model vocab_size "
                          f"{cfg['vocab_size']} ({meta_path})")
    return meta
