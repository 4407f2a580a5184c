"""utils.distributed: collectives on the group's device (NCCL rules checked on CPU), two real gloo ranks."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from utils import distributed as du

CPU = torch.device("cpu")
GPU1 = torch.device("cuda", 1)
_DEVICE_GET = torch.Tensor.device.__get__


def _tensors(values):
    for value in values:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, torch.Tensor):
                yield item


class VirtualDevices(TorchFunctionMode):
    """Tensors computed on the CPU that report the device they were asked to be on.

    ``device=`` arguments and ``Tensor.to`` set a tensor's reported device; every other op gives
    its result the device of its tensor inputs and, like real torch, refuses inputs on two
    different devices. So a CPU-only machine can check where a helper puts each tensor.
    """

    def __init__(self):
        super().__init__()
        self.where = WeakIdKeyDictionary()

    def device_of(self, tensor: torch.Tensor) -> torch.device:
        return self.where.get(tensor, CPU)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func == _DEVICE_GET:
            return self.device_of(args[0])
        target = kwargs.pop("device", None)
        if func is torch.Tensor.to:  # to(device), to(device, dtype), to(dtype)
            target = next((a for a in args[1:] if isinstance(a, (str, torch.device))), target)
            args = tuple(a for a in args if not isinstance(a, (str, torch.device)))
            if target is not None and torch.device(target) != self.device_of(args[0]):
                kwargs["copy"] = True  # the CPU result must be a new tensor to carry its own device
        inputs = {self.device_of(t) for t in _tensors([*args, *kwargs.values()])}
        if target is None and len(inputs) > 1:
            raise RuntimeError(f"{func.__name__}: expected all tensors on one device, got {sorted(map(str, inputs))}")
        out = func(*args, **kwargs)
        device = torch.device(target) if target is not None else (inputs.pop() if inputs else CPU)
        for tensor in _tensors([out]):
            if args and tensor is args[0] and target is None:
                continue  # in-place op: the tensor keeps its device
            if device == CPU:
                self.where.pop(tensor, None)
            else:
                self.where[tensor] = device
        return out


@pytest.fixture
def fake_group(monkeypatch):
    """Pretend to be rank 0 of 2 under a backend; records every tensor and device the collectives get.

    The other rank is pretended to hold the same values as this one.
    """
    calls: list[tuple[str, torch.device]] = []

    def setup(backend: str, current_gpu: int = 1):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current_gpu)

        def all_reduce(tensor, op=None, group=None, async_op=False):
            calls.append(("all_reduce", tensor.device))
            tensor.mul_(2)

        def all_gather(outputs, tensor, group=None, async_op=False):
            calls.extend(("all_gather", t.device) for t in [tensor, *outputs])
            for out in outputs:
                out.copy_(tensor)  # refused (VirtualDevices) when the buffers sit elsewhere

        def broadcast_object_list(objects, src=0, group=None, device=None, group_src=None):
            calls.append(("broadcast_object_list", torch.device(device) if device is not None else None))

        def all_gather_object(outputs, obj, group=None):
            # Under NCCL torch puts the pickled object on torch.cuda.current_device().
            calls.append(("all_gather_object", torch.device("cuda", torch.cuda.current_device())
                          if backend == "nccl" else CPU))
            outputs[:] = [obj] * len(outputs)

        def barrier(group=None, async_op=False, device_ids=None):
            calls.append(("barrier", torch.device("cuda", device_ids[0]) if device_ids else CPU))

        for name, fn in [("all_reduce", all_reduce), ("all_gather", all_gather), ("barrier", barrier),
                         ("broadcast_object_list", broadcast_object_list),
                         ("all_gather_object", all_gather_object)]:
            monkeypatch.setattr(dist, name, fn)
        return calls

    return setup


def _use_every_helper(caller: torch.device):
    """Call each helper with tensors on ``caller``; returns what they gave back."""
    flag = torch.tensor([1.0], device=caller)
    total = du.all_reduce_sum(flag)
    x = torch.arange(6.0).reshape(3, 2).to(caller).requires_grad_()
    gathered = du.gather_with_grad(x)
    return {"flag": flag, "total": total, "gathered": gathered, "x": x,
            "object": du.broadcast_object({"a": 1}), "objects": du.all_gather_object(7),
            "barrier": du.barrier()}


@pytest.mark.parametrize("caller", [CPU, GPU1], ids=["cpu-caller", "gpu-caller"])
def test_nccl_collectives_get_tensors_on_the_rank_gpu(fake_group, caller):
    calls = fake_group("nccl", current_gpu=1)
    with VirtualDevices() as mode:
        assert du.collective_device() == GPU1
        out = _use_every_helper(caller)
        devices = {name: mode.device_of(out[name]) for name in ("flag", "total", "gathered")}
    names = [name for name, _ in calls]
    assert names == ["all_reduce", *["all_gather"] * 6, "broadcast_object_list", "all_gather_object", "barrier"]
    assert all(device == GPU1 for _, device in calls), calls
    # Results come back where the caller keeps its tensors; the input is left as it was.
    assert devices == {"flag": caller, "total": caller, "gathered": caller}
    assert out["flag"].tolist() == [1.0] and out["total"].tolist() == [2.0]
    assert torch.equal(out["gathered"].detach(), torch.arange(6.0).reshape(3, 2).repeat(2, 1))
    assert out["object"] == {"a": 1} and out["objects"] == [7, 7]


@pytest.mark.parametrize("caller", [CPU, GPU1], ids=["cpu-caller", "gpu-caller"])
def test_gloo_collectives_get_cpu_tensors(fake_group, caller):
    calls = fake_group("gloo")
    with VirtualDevices() as mode:
        assert du.collective_device() == CPU
        out = _use_every_helper(caller)
        devices = {name: mode.device_of(out[name]) for name in ("total", "gathered")}
    assert len(calls) == 10 and all(device in (CPU, None) for _, device in calls), calls
    assert devices == {"total": caller, "gathered": caller}


def test_gather_with_grad_keeps_the_local_rows_graph(fake_group):
    fake_group("nccl")
    with VirtualDevices():
        x = torch.ones(2, 3, requires_grad=True)
        gathered = du.gather_with_grad(x)
    gathered.sum().backward()
    # Only rank 0's own rows (the first two) reach x; the copies of the other rank do not.
    assert gathered.shape == (4, 3) and torch.equal(x.grad, torch.ones(2, 3))


def test_init_distributed_binds_the_gpu_before_nccl(monkeypatch):
    events = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: events.append(("set_device", index)))
    started = []
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **kw: (started.append(backend), events.append(("init", backend, kw.get("device_id")))))
    monkeypatch.setattr(dist, "get_backend", lambda group=None: started[-1])
    monkeypatch.setattr(dist, "new_group", lambda backend=None, **kw: events.append(("new_group", backend)) or "host")
    monkeypatch.setattr(du, "_HOST_GROUP", None)
    info = du.init_distributed(use_cuda=True)
    assert info == du.DistInfo(rank=3, world_size=4, local_rank=1)
    # Under NCCL a gloo group for host values, so they need no GPU sync.
    assert events == [("set_device", 1), ("init", "nccl", GPU1), ("new_group", "gloo")] and du._HOST_GROUP == "host"
    events.clear()
    monkeypatch.setattr(du, "_HOST_GROUP", None)
    du.init_distributed(use_cuda=False)
    assert events == [("init", "gloo", None)] and du._HOST_GROUP is None


def test_host_flags_skip_the_gpu_under_nccl(fake_group, monkeypatch):
    """every_rank_has_a_batch's flags go through the host group on the CPU, never to the GPU."""
    from utils.training import every_rank_has_a_batch

    calls = fake_group("nccl", current_gpu=1)
    groups = []
    real = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None, group=None: (groups.append(group), real(tensor, op)))
    monkeypatch.setattr(du, "_HOST_GROUP", "host")
    with VirtualDevices():
        assert every_rank_has_a_batch(2, du.DistInfo(0, 2, 0))  # this rank's flag doubled: both ranks have one
        assert not every_rank_has_a_batch(1, du.DistInfo(0, 2, 0))
        with pytest.raises(ValueError, match="CPU tensor"):
            du.all_reduce_sum_host(torch.ones(1).to(GPU1))
    assert calls == [("all_reduce", CPU), ("all_reduce", CPU)] and groups == ["host", "host"]


WORKER = textwrap.dedent("""
    import json
    import torch
    from utils import distributed as du

    info = du.init_distributed(use_cuda=False)
    rows = 3 if info.rank == 0 else 1  # rank 1 lost images: its batch is smaller
    x = torch.full((rows, 2), float(info.rank + 1), requires_grad=True)
    gathered = du.gather_with_grad(x)
    (gathered.sum(dim=1) * torch.arange(1, gathered.shape[0] + 1)).sum().backward()
    flag = torch.tensor([float(rows)])
    total = du.all_reduce_sum(flag)
    du._HOST_GROUP = torch.distributed.new_group(backend="gloo")  # as under NCCL: a second, real group
    from utils.training import every_rank_has_a_batch
    host = [du.all_reduce_sum_host(flag).tolist(), every_rank_has_a_batch(rows, info), every_rank_has_a_batch(2, info)]
    run = du.broadcast_object(f"run-of-rank-{info.rank}")
    objects = du.all_gather_object({"rank": info.rank})
    du.barrier()
    print("RESULT " + json.dumps({"gathered": gathered.tolist(), "grad": x.grad.tolist(), "total": total.tolist(),
                                  "flag": flag.tolist(), "run": run, "objects": objects,
                                  "world": [du.get_rank(), du.get_world_size()], "host": host}))
    du.cleanup()
""")


def test_two_gloo_ranks_under_torchrun(tmp_path, torchrun):
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    out = torchrun(str(script), [], cwd=tmp_path)
    results = {}
    for rank, text in out.items():
        lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
        assert len(lines) == 1, text
        results[rank] = json.loads(lines[0][len("RESULT "):])
    expected = [[1.0, 1.0]] * 3 + [[2.0, 2.0]]
    for rank in (0, 1):
        r = results[rank]
        assert r["gathered"] == expected and r["total"] == [4.0] and r["run"] == "run-of-rank-0"
        assert r["objects"] == [{"rank": 0}, {"rank": 1}] and r["world"] == [rank, 2]
        assert r["host"] == [[4.0], False, True]  # rank 1's one row stops both ranks' step
    # Gradients reach only the local rows, with the weights of their global positions (1..4).
    assert results[0]["grad"] == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]] and results[1]["grad"] == [[4.0, 4.0]]
    assert results[0]["flag"] == [3.0] and results[1]["flag"] == [1.0]  # inputs unchanged


def test_helpers_do_nothing_when_not_distributed():
    x = torch.ones(2, 3, requires_grad=True)
    assert du.gather_with_grad(x) is x
    assert du.all_gather_object(5) == [5] and du.broadcast_object("a") == "a"
    assert du.get_world_size() == 1 and du.get_rank() == 0
    value = torch.tensor([2.0])
    total = du.all_reduce_sum(value)
    assert total is not value and total.tolist() == [2.0]
    assert du.collective_device() == CPU
    du.barrier()
