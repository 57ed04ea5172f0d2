"""Task-agnostic inference: exact task recovery on separable tasks, the batched path against per-task calls,
the rules against an independent torch reference, temperatures, accuracy helpers and cost."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hatzoo
from hatzoo.errors import InputError, TaskError
from hatzoo.task_inference import (
    TaskAgnosticModel,
    agnostic_macs,
    evaluate,
    fit_feature_gaussians,
    fit_temperatures,
    global_class,
    predict,
)
from tests.model_support import train_random_tasks

RULES = ("msp", "entropy", "energy")
NUM_TASKS, WIDTH = 3, 6  # task t owns input dims 2t (class 0) and 2t + 1 (class 1)


def separable_model(head_gain: float = 4.0) -> hatzoo.HATModel:
    """An MLP whose features are its input (identity Linear + ReLU, every gate open) and whose task t
    head reads only its own two dims: task t's logits are large exactly on task t's inputs."""
    model = hatzoo.hatify(
        nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 2)), mask_init="dense"
    )
    for t in range(NUM_TASKS):
        model.add_task(num_classes=2, labels=[f"t{t}-a", f"t{t}-b"])
        with torch.no_grad():
            if t == 0:
                model.backbone[0].weight.copy_(torch.eye(WIDTH))
                model.backbone[0].bias.zero_()
            head = torch.zeros(2, WIDTH)
            head[0, 2 * t], head[1, 2 * t + 1] = head_gain, head_gain
            model.heads[t].weight.copy_(head)
            model.heads[t].bias.zero_()
        model.end_task(t)
    return model.eval()


def separable_inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, task, class): small positive noise everywhere plus a bump on the dim of (task, class)."""
    gen = torch.Generator().manual_seed(seed)
    task = torch.randint(0, NUM_TASKS, (n,), generator=gen)
    cls = torch.randint(0, 2, (n,), generator=gen)
    x = torch.rand(n, WIDTH, generator=gen) * 0.3
    x[torch.arange(n), 2 * task + cls] += 2.0 + torch.rand(n, generator=gen)
    return x, task, cls


@pytest.fixture(scope="module")
def trained() -> hatzoo.HATModel:
    """A small MLP trained a few steps per task (partial masks from N(0, 1)), tasks of 2, 3 and 4 classes,
    with task 1 forgotten so the answering ids (0, 2, 3) are not the columns."""
    torch.manual_seed(0)
    model = hatzoo.hatify(
        nn.Sequential(
            nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 5)
        )
    )
    train_random_tasks(model, (2, 2, 3, 4), (1, 4, 4), steps=5, batch=16, lr=1e-2)
    model.forget(1)
    return model.eval()


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_recovers_the_task_of_separable_inputs(rule: str) -> None:
    model = separable_model()
    x, task, cls = separable_inputs(300)
    p = predict(model, x, rule=rule)
    assert p.tasks == [0, 1, 2]
    assert torch.equal(p.task, task) and torch.equal(p.class_index, cls)
    assert p.label == [f"t{t}-{'ab'[c]}" for t, c in zip(task.tolist(), cls.tolist(), strict=True)]
    assert p.scores.shape == (300, NUM_TASKS)
    assert torch.equal(p.scores.argmax(1), task)
    acc = evaluate(model, x, task, cls, rules=[rule], batch_size=64)[rule]
    assert (acc.task, acc.class_incremental, acc.task_incremental, acc.rows) == (1.0, 1.0, 1.0, 300)
    classes = {0: (0, 1), 1: (2, 3), 2: (4, 5)}
    assert torch.equal(global_class(p, classes), 2 * task + cls)


def _reference_scores(logits: list[torch.Tensor], rule: str, temps: list[float]) -> torch.Tensor:
    """The rules written again with torch's own softmax and logsumexp, in float64."""
    cols = []
    for z, t in zip(logits, temps, strict=True):
        z = z.double() / t
        p = z.softmax(1)
        if rule == "msp":
            cols.append(p.max(1).values)
        elif rule == "entropy":
            cols.append((p * z.log_softmax(1)).sum(1) / math.log(z.shape[1]))
        else:
            cols.append(t * torch.logsumexp(z, 1))
    return torch.stack(cols, 1)


@pytest.mark.parametrize("rule", RULES)
def test_batched_path_equals_per_task_calls(trained: hatzoo.HATModel, rule: str) -> None:
    x = torch.randn(37, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    temps = {0: 0.7, 2: 1.0, 3: 2.5}
    p = predict(trained, x, rule=rule, temperatures=temps)
    assert p.tasks == [0, 2, 3]
    with torch.no_grad():
        per_task = [trained(x, task=t) for t in p.tasks]
    for got, want in zip(p.logits, per_task, strict=True):
        assert torch.equal(got, want)
    ref = _reference_scores(per_task, rule, [temps[t] for t in p.tasks])
    torch.testing.assert_close(p.scores, ref, rtol=0, atol=1e-9)
    column = ref.argmax(1)
    assert p.task.tolist() == [p.tasks[c] for c in column.tolist()]
    chosen = [per_task[c][i] for i, c in enumerate(column.tolist())]
    assert p.class_index.tolist() == [int(z.argmax()) for z in chosen]
    assert p.label == [
        trained.tasks[t].labels[k] for t, k in zip(p.task.tolist(), p.class_index.tolist(), strict=True)
    ]
    # rows are answered independently: one row alone gets the same answer as in the batch
    alone = predict(trained, x[5:6], rule=rule, temperatures=temps)
    assert int(alone.task) == int(p.task[5])
    torch.testing.assert_close(alone.scores[0], p.scores[5], rtol=0, atol=1e-6)


def test_evaluate_counts_what_predict_answers(trained: hatzoo.HATModel) -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50, 1, 4, 4, generator=gen)
    task = torch.tensor([0, 2, 3])[torch.randint(0, 3, (50,), generator=gen)]
    target = torch.stack(
        [torch.randint(0, trained.tasks[int(t)].num_classes, (), generator=gen) for t in task]
    )
    accs = evaluate(trained, x, task, target, batch_size=16)
    assert set(accs) == set(RULES)
    with torch.no_grad():
        given = torch.tensor([int(trained(x[i : i + 1], task=int(t)).argmax()) for i, t in enumerate(task)])
    for rule in RULES:
        p = predict(trained, x, rule=rule)
        right = p.task == task
        assert accs[rule].rows == 50
        assert accs[rule].task == pytest.approx(right.double().mean().item())
        assert accs[rule].class_incremental == pytest.approx(
            (right & (p.class_index == target)).double().mean().item()
        )
        assert accs[rule].task_incremental == pytest.approx((given == target).double().mean().item())
        assert 0 < accs[rule].class_incremental < accs[rule].task_incremental < 1


def test_specialized_task_models_answer_like_the_hat_model(trained: hatzoo.HATModel) -> None:
    x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    wrapper = TaskAgnosticModel.from_task_models([trained.specialize(t) for t in (0, 2, 3)])
    assert wrapper.tasks == [0, 2, 3] and not wrapper.training
    assert TaskAgnosticModel.from_hat_model(trained).tasks == [0, 2, 3]
    for rule in RULES:
        a, b = predict(trained, x, rule=rule), wrapper.predict(x, rule=rule)
        assert (
            a.tasks == b.tasks and torch.equal(a.task, b.task) and torch.equal(a.class_index, b.class_index)
        )
        assert a.label == b.label
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
    pruned, dense = agnostic_macs(wrapper, (1, 4, 4)), agnostic_macs(trained, (1, 4, 4))
    assert pruned == dense and set(pruned) == {0, 2, 3}
    full = 16 * 24 + 24 * 12  # the backbone with every unit kept (heads come on top)
    assert all(0 < v < full + 12 * 4 for v in pruned.values())


def test_temperature_fit_recovers_the_temperature_of_the_labels() -> None:
    """Labels drawn from softmax(logits / 2.5): the NLL-optimal temperature is 2.5."""
    model = separable_model()
    gen = torch.Generator().manual_seed(7)
    data = {}
    for t in range(NUM_TASKS):
        x = torch.zeros(6000, WIDTH)
        x[:, 2 * t : 2 * t + 2] = torch.rand(6000, 2, generator=gen)
        with torch.no_grad():
            probs = (model(x, task=t) / 2.5).softmax(1)
        y = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        data[t] = [(x[:3000], y[:3000]), (x[3000:], y[3000:])] if t == 0 else (x, y)
    temps = fit_temperatures(model, data)
    assert set(temps) == {0, 1, 2}
    for value in temps.values():
        assert value == pytest.approx(2.5, rel=0.12)


def test_clear_errors() -> None:
    model = separable_model()
    x = separable_inputs(4)[0]
    with pytest.raises(InputError, match="unknown task-inference rule 'soft'.*msp, entropy, energy"):
        predict(model, x, rule="soft")
    with pytest.raises(InputError, match=r"temperatures given for tasks \[7\]"):
        predict(model, x, temperatures={7: 2.0})
    with pytest.raises(InputError, match="temperatures must be finite numbers > 0"):
        predict(model, x, temperatures={0: 0.0})
    with pytest.raises(InputError, match="no validation data for tasks"):
        fit_temperatures(model, {0: (x, torch.zeros(4, dtype=torch.long))})
    with pytest.raises(InputError, match="one row each"):
        evaluate(model, x, torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    model.train()
    with pytest.raises(InputError, match=r"call model.eval\(\) first"):
        predict(model, x)
    fresh = hatzoo.hatify(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))).eval()
    with pytest.raises(TaskError, match="no ended task"):
        predict(fresh, torch.zeros(1, 4))
    with pytest.raises(InputError, match="list of TaskModels"):
        TaskAgnosticModel([])
    with pytest.raises(InputError, match="HATModel or a TaskAgnosticModel"):
        predict(nn.Linear(2, 2), x)


def test_load_with_task_auto_answers_like_the_saved_model(trained: hatzoo.HATModel, tmp_path) -> None:
    trained.save_pretrained(tmp_path / "m")
    auto = hatzoo.load(tmp_path / "m", task="auto")
    assert isinstance(auto, TaskAgnosticModel) and auto.tasks == [0, 2, 3]
    x = torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    a, b = trained.predict(x), auto.predict(x)
    assert torch.equal(a.task, b.task) and a.label == b.label
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)


def _training_data(rows: int, seed: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Each task's separable inputs with their classes, as its training data."""
    x, task, cls = separable_inputs(rows, seed)
    return {t: (x[task == t], cls[task == t]) for t in range(NUM_TASKS)}


def test_mahalanobis_recovers_the_task_of_separable_inputs() -> None:
    model = separable_model()
    gaussians = fit_feature_gaussians(model, _training_data(600, seed=1))
    x, task, cls = separable_inputs(300)
    p = model.predict(x, rule="mahalanobis", gaussians=gaussians)
    assert torch.equal(p.task, task) and torch.equal(p.class_index, cls)
    acc = evaluate(model, x, task, cls, gaussians=gaussians, batch_size=64)
    assert set(acc) == {"msp", "entropy", "energy", "mahalanobis"}
    assert (acc["mahalanobis"].task, acc["mahalanobis"].class_incremental) == (1.0, 1.0)


def _reference_distances(f: torch.Tensor, y: torch.Tensor, g: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """min-class Mahalanobis distances of rows ``g`` under Gaussians fitted on (f, y), with torch.cov."""
    means = torch.stack([f[y == c].mean(0) for c in range(int(y.max()) + 1)])
    cov = torch.cov((f - means[y]).T, correction=0)
    cov += shrinkage * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype)
    return (
        torch.stack([((g - m) * torch.linalg.solve(cov, (g - m).T).T).sum(1) for m in means], 1).min(1).values
    )


def test_mahalanobis_scores_equal_an_independent_reference(trained: hatzoo.HATModel) -> None:
    """One feature layer (a plain MLP): distances standardized by their mean and deviation on the
    training data, written again with torch.cov and a per-class loop."""
    gen = torch.Generator().manual_seed(8)
    data = {}
    for t in (0, 2, 3):
        k = trained.tasks[t].num_classes
        data[t] = [
            (torch.randn(40, 1, 4, 4, generator=gen), torch.arange(40) % k),
            (torch.randn(25, 1, 4, 4, generator=gen), torch.randint(0, k, (25,), generator=gen)),
        ]
    gaussians = fit_feature_gaussians(trained, data, shrinkage=0.01)
    x = torch.randn(19, 1, 4, 4, generator=gen)
    p = predict(trained, x, rule="mahalanobis", gaussians=gaussians)
    with torch.no_grad():
        for column, t in enumerate(p.tasks):
            f = torch.cat([trained.forward_features(xb, task=t) for xb, _ in data[t]]).double()
            y = torch.cat([yb for _, yb in data[t]])
            fitted = _reference_distances(f, y, f, 0.01)
            d = _reference_distances(f, y, trained.forward_features(x, task=t).double(), 0.01)
            want = -(d - fitted.mean()) / fitted.std()
            torch.testing.assert_close(p.scores[:, column], want, rtol=1e-6, atol=1e-6)
    # the specialized tasks answer with Gaussians fitted on their own (pruned) features
    wrapper = TaskAgnosticModel.from_hat_model(trained)
    own = fit_feature_gaussians(wrapper, data, shrinkage=0.01)
    assert wrapper.predict(x, rule="mahalanobis", gaussians=own).tasks == p.tasks


def test_mahalanobis_reads_every_feature_layer_of_a_timm_backbone() -> None:
    """A timm ViT's block outputs (token means) and its final features, as timm's forward_intermediates
    gives them, each with its own standardized distance."""
    torch.manual_seed(0)
    model = hatzoo.create_model("hat-vit-tiny", img_size=16, patch_size=4, in_chans=1, depth=2)
    for _ in range(2):
        model.end_task(model.add_task(num_classes=2))
    agnostic = TaskAgnosticModel.from_hat_model(model.eval())
    gen = torch.Generator().manual_seed(1)
    data = {t: (torch.randn(64, 1, 16, 16, generator=gen), torch.arange(64) % 2) for t in (0, 1)}
    gaussians = fit_feature_gaussians(agnostic, data)
    x = torch.randn(9, 1, 16, 16, generator=gen)
    p = agnostic.predict(x, rule="mahalanobis", gaussians=gaussians)
    with torch.no_grad():
        for t, net in enumerate(agnostic.task_models):

            def layers(v: torch.Tensor, net=net) -> list[torch.Tensor]:
                blocks = net.backbone.forward_intermediates(v, intermediates_only=True, output_fmt="NLC")
                return [b.mean(1).double() for b in blocks] + [net.backbone(v).double()]

            train, test = layers(data[t][0]), layers(x)
            assert [len(m) for m in gaussians[t].means] == [2, 2, 2]
            want = 0
            for f, g in zip(train, test, strict=True):
                fitted = _reference_distances(f, data[t][1], f, 1e-3)
                want = want - (_reference_distances(f, data[t][1], g, 1e-3) - fitted.mean()) / fitted.std()
            torch.testing.assert_close(p.scores[:, t], want, rtol=1e-5, atol=1e-5)
    assert model.predict(x, rule="mahalanobis", gaussians=fit_feature_gaussians(model, data)).tasks == [0, 1]


def test_mahalanobis_clear_errors(trained: hatzoo.HATModel) -> None:
    x = torch.randn(4, 1, 4, 4)
    with pytest.raises(InputError, match=r"needs the feature Gaussians of tasks \[0, 2, 3\]"):
        predict(trained, x, rule="mahalanobis")
    with pytest.raises(InputError, match="msp, entropy, energy, mahalanobis"):
        predict(trained, x, rule="maha")
    with pytest.raises(InputError, match="no training data for tasks"):
        fit_feature_gaussians(trained, {0: (x, torch.zeros(4, dtype=torch.long))})
    two = {t: (x, torch.zeros(4, dtype=torch.long)) for t in (0, 2, 3)}
    with pytest.raises(InputError, match="at least one row of each of its classes"):
        fit_feature_gaussians(trained, two)
    with pytest.raises(InputError, match=r"labels must be in \[0, 2\)"):
        fit_feature_gaussians(trained, {**two, 0: (x, torch.full((4,), 2))})
    wide = separable_model()
    gaussians = fit_feature_gaussians(wide, _training_data(60, seed=2))
    with pytest.raises(InputError, match=r"fitted on feature layers of widths \[6\], got \[5\]"):
        gaussians[0].score([torch.zeros(2, 5)])
