"""Everything a HAT model creates after construction follows its device and dtype; no host syncs per step."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import hatzoo
from hatzoo.diagnostics import count_ops, syncs
from tests.model_support import ARCHS, OPTIMIZERS


def floating_dtypes(model: nn.Module) -> set[torch.dtype]:
    tensors = [*model.parameters(), *model.buffers()]
    return {t.dtype for t in tensors if t.is_floating_point()}


def train_steps(model, task, x, y, optimizer, steps=4, autocast=False):
    model.train()
    for step in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x, task=task, scale=1 + 40 * step)
            loss = F.cross_entropy(logits.float(), y) + model.regularization(task=task)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_float64_model_grows_trains_locks_and_specializes_in_float64(arch):
    torch.manual_seed(0)
    model = ARCHS[arch]().double()
    x, y = torch.randn(8, 1, 16, 16, dtype=torch.float64), torch.randint(0, 2, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # the shared weights
    for _ in range(2):
        task = model.add_task(num_classes=2)
        assert floating_dtypes(model) == {torch.float64}, "a new task's tensors must follow .double()"
        optimizer.add_param_group({"params": model.task_parameters(task)})
        train_steps(model, task, x, y, optimizer)
        model.end_task(task)
        if task == 0:
            model.eval()
            with torch.no_grad():
                before = model(x, task=0)
    model.eval()
    with torch.no_grad():
        after = model(x, task=0)
        net = model.specialize(0)
        pruned = net(x)
    assert after.dtype == torch.float64 and torch.equal(before, after)
    assert floating_dtypes(net) == {torch.float64}
    torch.testing.assert_close(pruned, after, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_bfloat16_model_runs_and_trains(arch):
    torch.manual_seed(1)
    model = ARCHS[arch]().to(torch.bfloat16)
    task = model.add_task(num_classes=3)
    assert floating_dtypes(model) == {torch.bfloat16}
    x, y = torch.randn(4, 1, 16, 16, dtype=torch.bfloat16), torch.randint(0, 3, (4,))
    train_steps(model, task, x, y, torch.optim.AdamW(model.parameters(), lr=1e-3))
    model.end_task(task)
    model.eval()
    with torch.no_grad():
        logits = model(x, task=task)
    assert logits.dtype == torch.bfloat16 and logits.shape == (4, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("opt", ["sgd-momentum", "adamw-decay"])
def test_bf16_autocast_training_keeps_earlier_tasks_bitwise(arch, opt):
    torch.manual_seed(2)
    model = ARCHS[arch]()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 2, (8,))
    optimizer = OPTIMIZERS[opt](model.parameters())
    first_task = []  # task 0's logits in float32 and under bf16 autocast, after each task
    for task in range(2):
        assert model.add_task(num_classes=2) == task
        if task:
            optimizer.add_param_group({"params": model.task_parameters(task)})
        train_steps(model, task, x, y, optimizer, autocast=True)
        model.end_task(task)
        model.eval()
        with torch.no_grad():
            plain = model(x, task=0)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                first_task.append((plain, model(x, task=0)))
    (before, before_amp), (after, after_amp) = first_task
    assert torch.equal(before, after) and torch.equal(before_amp, after_amp)


def test_later_tensors_follow_a_moved_model_and_loading_takes_dtype(tmp_path):
    model = ARCHS["vit"]()
    model.add_task(num_classes=2)
    model.end_task(0)
    model.reopen_task(0)
    model.end_task(0)
    model.to(torch.float64)
    model.add_task(num_classes=2)
    model.forget(1)
    assert floating_dtypes(model) == {torch.float64}
    model.save_pretrained(tmp_path / "m")
    loaded = hatzoo.HATModel.from_pretrained(tmp_path / "m", dtype=torch.float64)
    assert floating_dtypes(loaded) == {torch.float64}
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded(x, task=0), model.eval()(x, task=0))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_training_step_with_locks_active_never_synchronizes(arch):
    """No .item(), bool(tensor), nonzero or data-dependent shape, and no tensor from Python data, per step."""
    torch.manual_seed(3)
    model = ARCHS[arch]()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 2, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = model.add_task(num_classes=2)
    train_steps(model, first, x, y, optimizer, steps=2)
    model.end_task(first)
    second = model.add_task(num_classes=2)
    optimizer.add_param_group({"params": model.task_parameters(second)})
    train_steps(model, second, x, y, optimizer, steps=2)  # the first steps after a change may set up
    with count_ops() as step_ops:
        train_steps(model, second, x, y, optimizer, steps=1)
    model.eval()
    with torch.no_grad(), count_ops() as eval_ops:
        model(x, task=first)
    assert syncs(step_ops) == 0, {op: n for op, n in step_ops.items() if "scalar" in op or "nonzero" in op}
    assert syncs(eval_ops) == 0
    # the counted step did run the lock machinery: gradient filters and the embedding clamp
    assert step_ops["aten::masked_fill_.Scalar"] > 0 and step_ops["aten::_foreach_clamp_min_.Scalar"] > 0


def test_the_sync_counter_sees_what_would_synchronize():
    x = torch.arange(4.0)
    with count_ops() as ops:
        x.sum().item()
        bool(x.any())
        torch.tensor([1.0, 2.0])
        x[x > 1]
    assert syncs(ops) == 4


def test_one_gate_computation_serves_every_group():
    """All gates of a forward pass come from one flat vector: the gate ops do not grow with the depth."""
    counts = {}
    for depth in (2, 6):
        model = hatzoo.create_model("hat-vit-tiny", img_size=16, patch_size=4, in_chans=1, depth=depth)
        task = model.add_task(num_classes=2)
        model.train()
        with count_ops() as ops:
            model.gates(task, scale=10.0)
        counts[depth] = sum(ops.values())
    assert counts[2] == counts[6]
