"""utils.distributed with two real gloo processes: uneven gathers keep gradients and never hang."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils import distributed as du


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = 3 if rank == 0 else 1  # rank 1 lost images: its batch is smaller
        x = torch.full((rows, 2), float(rank + 1), requires_grad=True)
        gathered = du.gather_with_grad(x)
        (gathered.sum(dim=1) * torch.arange(1, gathered.shape[0] + 1)).sum().backward()
        objects = du.all_gather_object({"rank": rank})
        total = du.all_reduce_sum(torch.tensor([float(rows)]))
        torch.save({"gathered": gathered.detach(), "grad": x.grad, "objects": objects, "total": total},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_uneven_batches(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    expected = torch.tensor([[1.0, 1.0]] * 3 + [[2.0, 2.0]])
    assert torch.equal(r0["gathered"], expected) and torch.equal(r1["gathered"], expected)
    # Gradients reach only the local rows, with the weights of their global positions (1..4).
    assert torch.equal(r0["grad"], torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert torch.equal(r1["grad"], torch.tensor([[4.0, 4.0]]))
    assert r0["objects"] == [{"rank": 0}, {"rank": 1}] and r0["total"].item() == 4.0


def test_helpers_do_nothing_when_not_distributed():
    x = torch.ones(2, 3, requires_grad=True)
    assert du.gather_with_grad(x) is x
    assert du.all_gather_object(5) == [5] and du.broadcast_object("a") == "a"
    assert du.get_world_size() == 1 and du.get_rank() == 0
    du.barrier()
