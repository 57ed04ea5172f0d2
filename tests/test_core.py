"""The HAT core: zero forgetting under any optimizer, locks, specialize, capacity, forget, errors."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

import hatzoo
from hatzoo.core.gates import soft_gate
from hatzoo.core.schedules import get_schedule
from hatzoo.core.specialize import ConstantBranch, specialize
from tests.model_support import ARCHS, OPTIMIZERS, tiny_mlp, train_tasks, vit

MORE_OPTIMIZERS = {
    "sgd-nesterov-decay": lambda params: torch.optim.SGD(
        params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01
    ),
    "adam-amsgrad": lambda params: torch.optim.Adam(params, lr=2e-3, amsgrad=True),
    "rmsprop": lambda params: torch.optim.RMSprop(params, lr=1e-3, momentum=0.5),
    "adagrad": lambda params: torch.optim.Adagrad(params, lr=0.05),
}


def train_task(model, optimizer_factory, optimizer, x, y, steps=6, end=True, after_backward=None):
    """Add a task and train it a few steps with the one optimizer (created on the first task).

    ``after_backward(model)`` runs between backward and the step; ``end=False`` leaves the task open.
    """
    task = model.add_task(num_classes=int(y.max()) + 1)
    model.train()
    if optimizer is None:
        optimizer = optimizer_factory([p for p in model.parameters() if p.requires_grad])
    else:
        optimizer.add_param_group({"params": model.task_parameters(task)})
    schedule = get_schedule("linear", model.config.smax)
    for step in range(steps):
        logits = model(x, task=task, scale=schedule(step, steps))
        loss = F.cross_entropy(logits, y) + model.regularization(task=task)
        optimizer.zero_grad()
        loss.backward()
        if after_backward is not None:
            after_backward(model)
        optimizer.step()
    if end:
        model.end_task(task)
    return task, optimizer


def train_random_tasks(model, optimizer_name, x, num_tasks):
    """Train ``num_tasks`` tasks on random two-class labels with one optimizer; returns the optimizer."""
    optimizer = None
    for _ in range(num_tasks):
        y = torch.randint(0, 2, (len(x),))
        _, optimizer = train_task(model, OPTIMIZERS[optimizer_name], optimizer, x, y)
    return optimizer


def eval_logits(model, x, tasks):
    """Each task's logits for ``x`` in eval mode, by task id."""
    model.eval()
    with torch.no_grad():
        return {t: model(x, task=t) for t in tasks}


def three_tasks(seed, optimizer_name):
    """A tiny MLP with three trained tasks, its input, optimizer, and the logits of tasks 0 and 2."""
    torch.manual_seed(seed)
    model = tiny_mlp()
    x = torch.randn(8, 1, 16, 16)
    optimizer = train_random_tasks(model, optimizer_name, x, 3)
    return model, x, optimizer, eval_logits(model, x, (0, 2))


def assert_unchanged(model, x, before):
    """Every task in ``before`` still gives bitwise the same logits."""
    after = eval_logits(model, x, before)
    for t in before:
        assert torch.equal(after[t], before[t]), f"task {t} changed"


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_earlier_tasks_are_bitwise_unchanged(arch, optimizer_name):
    torch.manual_seed(0)
    model = ARCHS[arch]()
    x = torch.randn(8, 1, 16, 16)
    reference, optimizer = {}, None
    for _ in range(4):
        y = torch.randint(0, 3, (8,))
        task, optimizer = train_task(model, OPTIMIZERS[optimizer_name], optimizer, x, y)
        model.eval()
        with torch.no_grad():
            reference[task] = model(x, task=task)
            for old in range(task):
                changed = f"task {old} changed after task {task}"
                assert torch.equal(model(x, task=old), reference[old]), changed
    # training really happened: the tasks differ
    assert not torch.equal(reference[0], reference[3])


def shared_parameters(model):
    per_task = {id(p) for t in range(model.num_tasks) for p in model.task_parameters(t)}
    return {n: p for n, p in model.backbone.named_parameters() if id(p) not in per_task}


@pytest.mark.parametrize(
    ("arch", "optimizer_name"),
    [(arch, "adamw-decay") for arch in ARCHS]
    + [("resnet", name) for name in ("sgd-momentum", "adam")]
    + [("mlp", name) for name in MORE_OPTIMIZERS],
)
def test_locked_entries_bitwise_unchanged_and_free_ones_train(arch, optimizer_name):
    torch.manual_seed(1)
    model = ARCHS[arch]()
    factory = {**OPTIMIZERS, **MORE_OPTIMIZERS}[optimizer_name]
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 2, (8,))
    _, optimizer = train_task(model, factory, None, x, y)
    before = {n: p.detach().clone() for n, p in shared_parameters(model).items()}
    locks = {name.removeprefix("backbone."): m for name, m in model.locked_entries().items()}
    train_task(model, factory, optimizer, x, y)
    changed_free = locked_total = 0
    for name, param in shared_parameters(model).items():
        # absent: task 0 used none of the units this tensor touches
        locked = locks.get(name, torch.zeros_like(param, dtype=torch.bool))
        assert torch.equal(param[locked], before[name][locked]), f"locked entries of {name} moved"
        changed_free += int((param[~locked] != before[name][~locked]).sum())
        locked_total += int(locked.sum())
    assert locked_total > 0, "nothing was locked after task 0"
    assert changed_free > 0, "no free entry was trained"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_specialize_matches_hat_model_and_prunes(arch):
    torch.manual_seed(2)
    model = ARCHS[arch]()
    x = torch.randn(8, 1, 16, 16)
    train_random_tasks(model, "sgd-momentum", x, 2)
    model.eval()
    for task in range(2):
        net = model.specialize(task)
        assert not any(isinstance(m, hatzoo.HATModel) for m in net.modules())
        with torch.no_grad():
            expected, got = model(x, task=task), net(x)
        assert (expected - got).abs().max().item() <= 1e-5
        kept = sum(k for k, _ in net.kept_units.values())
        total = sum(n for _, n in net.kept_units.values())
        assert kept == sum(int(model.masks(g)[task].sum()) for g in model.groups)
        dense = sum(p.numel() for p in model.backbone.parameters()) / (task + 2)  # rough: backbone + copies
        assert kept < total
        assert sum(p.numel() for p in net.backbone.parameters()) < dense * 2


def test_specialize_replaces_a_fully_masked_branch_by_its_constant():
    torch.manual_seed(3)
    model = vit()
    task = model.add_task(num_classes=2)
    with torch.no_grad():
        model.embedding("blocks.0.attn.heads", task).fill_(-1.0)
        model.embedding("blocks.1.mlp.hidden", task).fill_(-1.0)
    model.end_task(task)
    model.eval()
    net = model.specialize(task)
    assert isinstance(net.backbone.blocks[0].attn, ConstantBranch)
    assert isinstance(net.backbone.blocks[1].mlp, ConstantBranch)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert (model(x, task=task) - net(x)).abs().max().item() <= 1e-5


def test_capacity_counts_add_up():
    torch.manual_seed(4)
    model = tiny_mlp()
    train_random_tasks(model, "adam", torch.randn(8, 1, 16, 16), 3)
    report = model.capacity()
    assert set(report) == set(model.groups)
    for name, entry in report.items():
        masks = model.masks(name)
        assert entry["size"] == masks.shape[1]
        assert entry["used"] == {t: int(masks[t].sum()) for t in range(3)}
        union = int(masks.any(0).sum())
        assert entry["free"] == entry["size"] - union
        assert max(entry["used"].values()) <= union <= sum(entry["used"].values())


def test_forget_frees_exclusive_units_and_leaves_other_tasks_bitwise_unchanged():
    model, x, optimizer, before = three_tasks(5, "sgd-momentum")
    free_before = {g: e["free"] for g, e in model.capacity().items()}
    exclusive = {g: int((model.masks(g)[1] & ~model.masks(g)[[0, 2]].any(0)).sum()) for g in model.groups}
    model.forget(1)
    after = model.capacity()
    for g in model.groups:
        assert after[g]["free"] == free_before[g] + exclusive[g]
    assert sum(exclusive.values()) > 0
    with pytest.raises(hatzoo.TaskError, match="forgotten"):
        model(x, task=1)
    # new tasks may reuse the freed units; tasks 0 and 2 stay exact
    train_task(model, OPTIMIZERS["sgd-momentum"], optimizer, x, torch.randint(0, 2, (8,)))
    assert_unchanged(model, x, before)


def test_reopen_keeps_every_other_task_locked():
    model, x, optimizer, before = three_tasks(6, "adam")
    model.reopen_task(1)
    model.train()
    y = torch.randint(0, 2, (8,))
    for _ in range(3):
        loss = F.cross_entropy(model(x, task=1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.end_task(1)
    assert_unchanged(model, x, before)


def test_bad_input_gets_clear_errors():
    model = vit()
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(hatzoo.TaskError, match="does not exist"):
        model(x, task=0)
    task = model.add_task(num_classes=2, labels=["cat", "dog"])
    with pytest.raises(hatzoo.TaskError, match="still open"):
        model.add_task(num_classes=2)
    for missing in (5, -1):
        with pytest.raises(hatzoo.TaskError, match="does not exist"):
            model(x, task=missing)
    with pytest.raises(hatzoo.InputError, match="channels"):
        model(torch.randn(2, 3, 16, 16), task=task)
    with pytest.raises(hatzoo.InputError, match="shape"):
        model(torch.randn(2, 16, 16), task=task)
    for scale in (0, -3.0):
        with pytest.raises(hatzoo.InputError, match="scale"):
            model.train()(x, task=task, scale=scale)
    with pytest.raises(hatzoo.InputError, match="labels"):
        model.end_task(task) or model.add_task(num_classes=3, labels=["a"])
    with pytest.raises(hatzoo.TaskError, match="already ended"):
        model.end_task(task)
    with pytest.raises(hatzoo.TaskError, match="reopen_task"):
        model.train()(x, task=task, scale=1.0)
    with pytest.raises(hatzoo.InputError, match="num_classes"):
        model.add_task(num_classes=0)
    assert isinstance(hatzoo.TaskError("x"), hatzoo.HATError)


def test_unsupported_model_says_how_to_write_a_policy():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(hatzoo.UnsupportedModelError, match="write a policy"):
        hatzoo.hatify(Custom())
    with pytest.raises(hatzoo.UnsupportedModelError):
        hatzoo.hatify(nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4)))


def test_zoo_architectures_are_in_timm_registry():
    model = timm.create_model("hat_vit_small_patch16_224", img_size=32, patch_size=4, in_chans=1)
    assert isinstance(model, hatzoo.HATModel)
    assert len(model.groups) == 24  # 12 blocks x (heads, mlp)
    resnet = hatzoo.create_model("hat-resnet50")
    assert len(resnet.groups) == 2 * 16  # 16 bottlenecks x (conv1, conv2)
    with pytest.raises(hatzoo.InputError, match="known"):
        hatzoo.create_model("hat-nope")


def test_hatify_takes_a_timm_model_with_its_classifier():
    model = hatzoo.hatify(timm.create_model("resnet34", num_classes=7, in_chans=1))
    task = model.add_task(num_classes=3)
    assert model.heads[task].out_features == 3
    assert model.spec.num_features == 512


@pytest.mark.parametrize("name", ["linear", "exponential", "cosine", "constant"])
def test_schedules_reach_smax(name):
    schedule = get_schedule(name, smax=400)
    assert schedule(9, 10) == pytest.approx(400)
    values = [schedule(b, 10) for b in range(10)]
    assert values == sorted(values)
    if name != "constant":
        assert values[0] == pytest.approx(1 / 400)


def test_embeddings_stay_clamped_and_compensated():
    torch.manual_seed(7)
    model = tiny_mlp()
    task = model.add_task(num_classes=2)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=50.0)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 2, (8,))
    for _ in range(3):
        loss = F.cross_entropy(model(x, task=task, scale=2.0), y) + model.regularization(task=task)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for g in model.groups:
        assert model.embedding(g, task).abs().max().item() <= model.config.clamp


def test_embedding_gradient_is_compensated():
    """d gate / d e = s sigmoid'(s e) * smax/s * (cosh(s e) + 1) / (cosh(e) + 1) (Serra et al.).

    Reference in float64 with sigmoid'(z) = 1 / (2 + 2 cosh z); where float32 autograd would round
    1 - sigmoid(z) to 0 (z > 17) the compensated gradient is still the formula's, not zero.
    """
    torch.manual_seed(8)
    upstream = torch.randn(200)
    for scale in (1 / 400, 0.5, 2.0, 40.0, 400.0):
        e = (torch.randn(200) * 3).requires_grad_()
        (soft_gate(e, scale, smax=400.0) * upstream).sum().backward()
        x, z = e.detach().double(), scale * e.detach().double()
        sigmoid_slope = scale / (2 + 2 * torch.cosh(z))
        factor = 400.0 / scale * (torch.cosh(torch.clamp(z, -50, 50)) + 1) / (torch.cosh(x) + 1)
        expected = upstream.double() * sigmoid_slope * factor
        torch.testing.assert_close(e.grad.double(), expected, rtol=1e-5, atol=1e-30)
        moderate = z.abs() < 8  # there float32 autograd of the sigmoid is accurate too
        plain = e.detach().clone().requires_grad_()
        (torch.sigmoid(scale * plain) * upstream).sum().backward()
        torch.testing.assert_close(
            e.grad[moderate], (plain.grad.double() * factor).float()[moderate], rtol=1e-4, atol=1e-6
        )


def test_a_deep_copy_keeps_locks_and_compensation():
    torch.manual_seed(10)
    model = tiny_mlp()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 2, (8,))
    train_task(model, OPTIMIZERS["adamw-decay"], None, x, y)
    clone = copy.deepcopy(model)
    before = eval_logits(clone, x, (0,))
    train_task(clone, OPTIMIZERS["adamw-decay"], None, x, y)
    assert_unchanged(clone, x, before)
    assert_unchanged(model, x, before)
    assert clone.num_tasks == 2 and model.num_tasks == 1


def test_optimizer_state_of_locked_entries_is_zeroed_so_it_cannot_go_subnormal():
    torch.manual_seed(9)
    model = tiny_mlp()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 2, (8,))
    _, optimizer = train_task(model, OPTIMIZERS["adam"], None, x, y)
    train_task(model, None, optimizer, x, y, steps=2, end=False)  # still open: only task 0's entries locked
    checked = 0
    params = dict(model.named_parameters())
    for name, locked in model.locked_entries().items():
        state = optimizer.state.get(params[name], {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                assert not state[name][locked].any(), f"{name} of locked entries is not zero"
                checked += 1
    assert checked > 0


def test_a_gradient_changed_after_backward_is_filtered_again_before_the_step():
    torch.manual_seed(12)
    model = tiny_mlp()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 2, (8,))
    _, optimizer = train_task(model, OPTIMIZERS["sgd-momentum"], None, x, y)
    before = eval_logits(model, x, (0,))

    def add_noise(model):  # e.g. gradient noise added by the user after backward
        for p in model.parameters():
            if p.grad is not None:
                p.grad.add_(torch.randn_like(p.grad))

    train_task(model, None, optimizer, x, y, steps=3, after_backward=add_noise)
    assert_unchanged(model, x, before)


def test_specialize_drops_only_the_gate_hooks_and_keeps_the_users_own():
    model = tiny_mlp()
    seen = []
    model.backbone[2].register_forward_hook(lambda module, args, out: seen.append(out.shape))  # ReLU
    x = torch.randn(4, 1, 16, 16)
    train_tasks(model, 1, x)
    with torch.no_grad():
        reference = model(x, task=0)
        net = specialize(model, 0, prune=False)  # gates as constants, every unit kept
        seen.clear()
        out = net(x)
    assert torch.allclose(
        out, reference, atol=1e-6
    )  # the gates hold once, as constants: no hook doubles them
    assert seen == [torch.Size([4, 64])]  # the user's hook came along with the copy and still runs
    assert model.hook_ids() & {k for m in net.modules() for k in m._forward_hooks} == set()
    assert len(model.hook_ids()) == len(model.groups)  # one gate per group; an MLP has no per-task tensors


def test_lock_filters_are_removed_when_their_weights_are_unlocked():
    model = tiny_mlp()
    x = torch.randn(4, 1, 16, 16)
    train_tasks(model, 1, x)
    head = model.heads[0].weight
    assert len(head._post_accumulate_grad_hooks) == 1  # an ended task's head is locked and filtered
    model.forget(0)
    assert not head._post_accumulate_grad_hooks  # forgotten: no lock, so no filter of hatzoo's is left


def test_an_optimizer_without_the_models_parameters_leaves_its_locks_alone():
    model = tiny_mlp()
    x = torch.randn(4, 1, 16, 16)
    train_tasks(model, 1, x)
    other = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([other], lr=1.0)
    with torch.no_grad():
        model.heads[0].weight.add_(1.0)  # a locked weight changed outside any step
    changed = model.heads[0].weight.detach().clone()
    other.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(model.heads[0].weight, changed)  # that optimizer's step did not visit this model
    model.eval()
    model(x, task=0)  # the next forward pass restores the locked values
    assert not torch.equal(model.heads[0].weight, changed)
