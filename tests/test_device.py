"""The CUDA-only decisions of the trainer, checked on CPU: device selection, NCCL backend and
torch.cuda.set_device(LOCAL_RANK) before the process group, pinned non_blocking batch copies,
MFU arithmetic. What a CPU cannot provide is mocked, and each mock says so: CUDA availability,
torch.cuda.set_device, NCCL's init_process_group, page-locked memory and copies to a GPU.
Everything else (the env parsing, the call order, the numbers) runs for real."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dataloader  # noqa: E402
import distributed  # noqa: E402
import runlog  # noqa: E402
from configurator import ConfigError  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

TORCHRUN_ENV = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}


@pytest.fixture
def torchrun_env(monkeypatch):
    for k, v in TORCHRUN_ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Mock (no GPU here): CUDA is available."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_picks_cuda_and_torchrun_rank_gets_its_local_gpu(fake_cuda, torchrun_env):
    d = distributed.DistContext()
    assert (d.ddp, d.rank, d.world, d.local_rank, d.master) == (True, 5, 8, 1, False)
    assert d.pick_device("auto") == "cuda:1"
    assert d.pick_device("cuda") == "cuda:1"
    assert d.pick_device("cuda:0") == "cuda:0"          # an explicit index is kept
    assert d.pick_device("cpu") == "cpu"


def test_single_process_cuda_is_plain_cuda(fake_cuda, monkeypatch):
    for k in TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    assert distributed.DistContext().pick_device("auto") == "cuda"


def test_cuda_requested_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)   # as on this machine
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    d = distributed.DistContext()
    assert d.pick_device("auto") == "cpu"
    with pytest.raises(ConfigError, match=r"^device 'cuda' requested but CUDA is not available$"):
        d.pick_device("cuda")


@pytest.fixture
def recorded_init(monkeypatch):
    """Mocks (no GPU, no NCCL here): torch.cuda.set_device and init_process_group record their
    calls in order; torch.distributed's env handling is not under test."""
    import torch.distributed as dist
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend=None, **kw: calls.append(("init_process_group", backend)))
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    return calls


def test_cuda_uses_nccl_after_setting_the_local_device(torchrun_env, recorded_init):
    d = distributed.DistContext()
    d.init("cuda")
    # set_device first: NCCL binds each rank's communicator to the current device at init
    assert recorded_init == [("set_device", 1), ("init_process_group", "nccl")]
    assert d.initialized and d.coll_device == "cuda:1"   # NCCL reduces CUDA tensors only


def test_cpu_uses_gloo_and_no_cuda_call(torchrun_env, recorded_init):
    d = distributed.DistContext()
    d.init("cpu")
    assert recorded_init == [("init_process_group", "gloo")]
    assert d.coll_device == "cpu"


def test_single_process_initialises_nothing(recorded_init, monkeypatch):
    for k in TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    d = distributed.DistContext()
    d.init("cuda")
    assert recorded_init == [] and not d.initialized


def test_cuda_batches_are_pinned_and_copied_non_blocking(monkeypatch):
    """Mocks (no GPU here): Tensor.pin_memory (page-locked memory needs a CUDA driver) and the
    copy to cuda; they record the calls and return CPU tensors."""
    calls = []

    def pin_memory(self):
        calls.append(("pin_memory", tuple(self.shape)))
        out = self.clone()
        out.pinned = True
        return out

    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and str(args[0]).startswith("cuda"):
            calls.append(("to", str(args[0]), getattr(self, "pinned", False),
                          kwargs.get("non_blocking", False)))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    x, y = torch.arange(6).view(2, 3), torch.arange(1, 7).view(2, 3)
    gx, gy = dataloader.to_device(x, y, "cuda:1")
    assert calls == [("pin_memory", (2, 3)), ("to", "cuda:1", True, True),
                     ("pin_memory", (2, 3)), ("to", "cuda:1", True, True)]
    assert torch.equal(gx, x) and torch.equal(gy, y)
    calls.clear()
    cx, cy = dataloader.to_device(x, y, "cpu")              # CPU: no pinning, same tensors
    assert calls == [] and cx is x and cy is y


def test_gpt2_124m_flops_per_token_and_h100_mfu():
    """nanoGPT's count for GPT-2 124M at T=1024, term by term, and the MFU the trainer logs for
    8 H100s doing 2**19 tokens in 0.25 s."""
    with torch.device("meta"):
        m = GPT(GPTConfig())
    L, C, V, T = 12, 768, 50304, 1024
    matmul = 12 * (C * 3 * C + C * C + 2 * C * 4 * C)          # c_attn, c_proj, c_fc, mlp.c_proj
    fpt = 6 * matmul + 12 * L * C * T + 6 * C * V
    assert m.flops_per_token(T) == fpt == 854_654_976
    n = m.get_num_params()                                    # nanoGPT: 6 N + 12 L H Q T
    assert abs(fpt / (6 * n + 12 * L * C * T) - 1) < 0.01
    assert runlog.peak_bf16_flops("NVIDIA H100 80GB HBM3") == ("H100", 989e12)
    assert runlog.peak_bf16_flops("NVIDIA H100 PCIe") == ("H100 PCIe", 756e12)
    assert runlog.peak_bf16_flops("NVIDIA H200") == ("H200", 989e12)
    assert runlog.peak_bf16_flops("Quadro K620") is None
    r = runlog.throughput(fpt, 2 ** 19, 8, 0.25, 989e12)
    assert r["tok_sec"] == 2 ** 21
    assert r["tflops"] == pytest.approx(224.0426, rel=1e-6)    # fpt * 2**19 / 8 / 0.25 / 1e12
    assert r["mfu"] == pytest.approx(0.226535, rel=1e-5)       # of 989 TFLOP/s dense bf16
    assert runlog.throughput(fpt, 2 ** 19, 8, 0.25, None)["mfu"] is None       # unknown GPU / fp32


def test_shared_early_exit_flops_count_every_layer_head():
    with torch.device("meta"):
        plain = GPT(GPTConfig())
        shared = GPT(GPTConfig(share_weights=True, early_exit=True))
    # a shared block is applied 12 times (same matmul FLOPs), but 12 heads instead of 1
    assert shared.flops_per_token(1024) - plain.flops_per_token(1024) == 11 * 6 * 768 * 50304
