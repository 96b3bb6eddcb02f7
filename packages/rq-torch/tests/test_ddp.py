"""Distributed QAT on 2 CPU processes (gloo): both ranks end with identical scales and weights,
and calibration merged both ranks' data (the same scales as one process seeing all of it)."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import rq_torch

WORLD = 2


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def rank_batches(rank: int, count: int = 4):
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(8, 1, 8, 8, generator=g) * (1 + rank), torch.randint(0, 10, (8,), generator=g)) for _ in range(count)]


def quantized_model():
    torch.manual_seed(0)
    model = SmallNet().eval()
    return rq_torch.quantize_model(model, torch.randn(1, 1, 8, 8), preset="npu_cnn", learn_scales=True)


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        qmodel = quantized_model()
        rq_torch.calibrate(qmodel, [x for x, _ in rank_batches(rank)], quiet=True)
        torch.save(qmodel.state_dict(), os.path.join(out_dir, f"calibrated{rank}.pt"))
        ddp = nn.parallel.DistributedDataParallel(qmodel)
        optimizer = torch.optim.SGD(
            [
                {"params": rq_torch.weight_parameters(qmodel), "lr": 0.01},
                {"params": rq_torch.quantizer_parameters(qmodel), "lr": 0.1},
            ]
        )
        ddp.train()
        for x, y in rank_batches(rank, 6):
            optimizer.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            optimizer.step()
        torch.save(qmodel.state_dict(), os.path.join(out_dir, f"trained{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still talks to it (an abort at exit, seen under load)
    finally:
        dist.destroy_process_group()


def test_two_ranks_end_qat_identical(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for stage in ("calibrated", "trained"):
        states = [torch.load(tmp_path / f"{stage}{r}.pt", weights_only=True) for r in range(WORLD)]
        assert states[0].keys() == states[1].keys()
        for key in states[0]:
            assert torch.equal(states[0][key], states[1][key]), (stage, key)

    single = quantized_model()  # one process that sees both ranks' calibration data
    rq_torch.calibrate(single, [x for r in range(WORLD) for x, _ in rank_batches(r)], quiet=True)
    calibrated = torch.load(tmp_path / "calibrated0.pt", weights_only=True)
    for key, value in single.state_dict().items():
        if key.endswith(".scale") and key.startswith("rq_quantizer"):
            assert torch.equal(value, calibrated[key]), key
    trained = torch.load(tmp_path / "trained0.pt", weights_only=True)
    assert any(not torch.equal(trained[k], calibrated[k]) for k in trained if k.endswith("weight"))  # training happened
