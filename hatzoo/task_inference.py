"""Task-agnostic inference: answer an input whose task is unknown (class-incremental evaluation).

HAT needs a task id to pick its masks. Without one, every ended task's subnetwork runs on the whole
batch, each task scores how strongly it claims each input, and the highest score wins; the answer is
that task's arg-max class. With ``z`` one task's logits, ``C`` its class count, ``T`` its temperature
and ``p = softmax(z / T)``, the rules (``hatzoo.task_rules.RULES``, shared with the server) are:

- ``msp``:     max_c p_c                        (maximum softmax probability)
- ``entropy``: sum_c p_c log p_c / log C        (negative entropy, normalized so class counts compare)
- ``energy``:  T logsumexp(z / T)               (negative free energy; the default)

Temperatures (one per task, 1 by default) are fitted by :func:`fit_temperatures` on a validation split
held out from each task's training data, never its test split.

The logits of a task trained on its own classes say little about inputs of other tasks. The fitted
feature rule reads the task's features instead: at each of its feature layers ``l`` (the stages timm
lists in ``feature_info``, average-pooled, and the final features the head reads), class means
``mu_c`` and a shared precision ``P`` are fitted on the task's training data, which continual learning
has at the end of the task (its units never change after; :func:`fit_feature_gaussians`). With
``d_l = min_c (f_l - mu_c)^T P (f_l - mu_c)`` standardized by its mean and deviation on that training
data (so layers and tasks compare):

- ``mahalanobis``: -sum_l (d_l - mean_l) / std_l   (Lee et al., 2018; needs ``gaussians=``)

The strongest rule needs a replay buffer of the tasks' training images (``hatzoo.replay``): each task's
head scores log p_t(x) / p_rest(x), its own data against the other tasks' (``hatzoo.likelihood_ratio``):

- ``likelihood_ratio``: the head's logit                (needs ``heads=``, or a model that carries them)

The cost of one answer is the sum of the tasks' kept FLOPs (:func:`agnostic_macs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hatzoo.core.flops import count_macs
from hatzoo.core.model import HATModel
from hatzoo.core.specialize import TaskModel
from hatzoo.errors import InputError, TaskError
from hatzoo.images import to_batch
from hatzoo.task_rules import DEFAULT_RULE, LIKELIHOOD_RATIO, RULES, choose, task_scores

# log T searched for the NLL-optimal temperature: T from 0.05 to 20
_LOG_T_GRID = torch.linspace(float(np.log(0.05)), float(np.log(20.0)), 601, dtype=torch.float64)

LabelledData = tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]]
FEATURE_RULE = "mahalanobis"
ALL_RULES = (*RULES, FEATURE_RULE, LIKELIHOOD_RATIO)


@dataclass
class TaskPrediction:
    """The answer for a batch: inferred task id, class within it, label, every task's score and logits."""

    task: torch.Tensor  # LongTensor [B]: task ids
    class_index: torch.Tensor  # LongTensor [B]: class within the inferred task
    label: list[str]
    scores: torch.Tensor  # [B, T] float64, columns in the order of ``tasks``; higher = more likely
    logits: list[torch.Tensor]  # per task [B, C_t], in the order of ``tasks``
    tasks: list[int]  # the task ids of the columns


class TaskAgnosticModel(nn.Module):
    """Specialized task models (``hatzoo.load(name, task=t)``) answered together without a task id."""

    def __init__(self, task_models: Sequence[TaskModel], ratio_heads: nn.Module | None = None) -> None:
        super().__init__()
        models = list(task_models)
        if not models or not all(isinstance(m, TaskModel) for m in models):
            raise InputError(
                "TaskAgnosticModel needs a non-empty list of TaskModels (hatzoo.load(name, task=t))"
            )
        ids = [m.task for m in models]
        if len(set(ids)) != len(ids):
            raise InputError(f"each task may appear once, got task ids {ids}")
        self.task_models = nn.ModuleList(models)
        # each task's likelihood-ratio head (hatzoo.likelihood_ratio.RatioHeads): the default rule then
        self.ratio_heads = ratio_heads
        if ratio_heads is not None and (missing := sorted(set(ids) - set(ratio_heads.tasks))):
            raise InputError(f"the likelihood-ratio heads lack tasks {missing}; fit them on every task")

    @classmethod
    def from_task_models(
        cls, task_models: Sequence[TaskModel], ratio_heads: nn.Module | None = None
    ) -> TaskAgnosticModel:
        """The wrapper over ``task_models`` (eval mode)."""
        return cls(task_models, ratio_heads).eval()

    @classmethod
    def from_hat_model(cls, model: HATModel, ratio_heads: nn.Module | None = None) -> TaskAgnosticModel:
        """Every ended, non-forgotten task of ``model``, pruned (``model.specialize(t)``) and wrapped."""
        return cls.from_task_models([model.specialize(t) for t in active_tasks(model)], ratio_heads)

    @property
    def default_rule(self) -> str:
        """``likelihood_ratio`` when the model carries its heads, else the logit rule ``energy``."""
        return LIKELIHOOD_RATIO if self.ratio_heads is not None else DEFAULT_RULE

    @property
    def tasks(self) -> list[int]:
        return [m.task for m in self.task_models]

    def task_model(self, task: int) -> TaskModel:
        """The wrapped model of task id ``task``."""
        return self.task_models[self.tasks.index(task)]

    def labels(self, task: int) -> list[str]:
        return list(self.task_model(task).labels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every task's logits for ``x``, in the order of ``tasks``."""
        return [m(x) for m in self.task_models]

    def predict(self, x: Any, **options: Any) -> TaskPrediction:
        """See :func:`predict`; ``x`` may be images (paths, PIL images, uint8 arrays) or a float batch."""
        return predict(self, x, **options)


Predictor = HATModel | TaskAgnosticModel


def active_tasks(model: Predictor) -> list[int]:
    """The task ids that answer: every ended, non-forgotten task of a HAT model, or the wrapped tasks."""
    if isinstance(model, TaskAgnosticModel):
        return model.tasks
    if not isinstance(model, HATModel):
        raise InputError(
            f"task-agnostic prediction needs a HATModel or a TaskAgnosticModel, got {type(model).__name__}"
        )
    tasks = [t for t, info in enumerate(model.tasks) if info.status == "ended"]
    if not tasks:
        raise TaskError("the model has no ended task to answer with; call end_task(t) after training task t")
    return tasks


def _labels(model: Predictor, task: int) -> list[str]:
    return model.labels(task) if isinstance(model, TaskAgnosticModel) else model.tasks[task].labels


@torch.no_grad()
def task_outputs(
    model: Predictor, x: torch.Tensor, layers: bool = False
) -> tuple[list[int], list[list[torch.Tensor]], list[torch.Tensor]]:
    """(task ids, features, logits [B, C_t]) with every answering task run on the batch.

    ``features[i]`` holds task i's final features [B, d] (what its head reads), after its pooled feature
    layers when ``layers`` is true.
    """
    tasks = active_tasks(model)
    if model.training:
        raise InputError("task-agnostic prediction runs the binary masks: call model.eval() first")
    features = [_features(model, x, t, layers) for t in tasks]
    return tasks, features, [_head(model, t)(f[-1]) for t, f in zip(tasks, features, strict=True)]


def _features(model: Predictor, x: torch.Tensor, task: int, layers: bool) -> list[torch.Tensor]:
    if isinstance(model, TaskAgnosticModel):
        net = model.task_model(task)
        return pooled_features(net.forward_features, net.backbone, x, layers)
    return pooled_features(partial(model.forward_features, task=task), model.backbone, x, layers)


def pooled_features(
    run: Callable[[torch.Tensor], torch.Tensor], backbone: nn.Module, x: torch.Tensor, layers: bool
) -> list[torch.Tensor]:
    """``run(x)``'s final features [B, d], after the pooled output of each of the backbone's
    ``feature_info`` stages when ``layers`` is true (read by forward hooks, removed after)."""
    taps: list[torch.Tensor] = []
    names = [info["module"] for info in getattr(backbone, "feature_info", [])] if layers else []
    prefix = getattr(backbone, "num_prefix_tokens", 0)
    handles = [
        backbone.get_submodule(name).register_forward_hook(
            lambda m, i, out: taps.append(_pooled(out, prefix))
        )
        for name in names
    ]
    try:
        final = run(x)
        return [*taps, final]
    finally:
        for handle in handles:
            handle.remove()


def _pooled(out: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """A feature layer's output as one vector per row: the mean over positions (NCHW) or over the patch
    tokens (NLC, class and register tokens left out as timm's ``forward_intermediates`` does)."""
    if out.ndim == 4:
        return out.mean((2, 3))
    return out[:, prefix_tokens:].mean(1) if out.ndim == 3 else out


def _head(model: Predictor, task: int) -> nn.Module:
    return model.task_model(task).head if isinstance(model, TaskAgnosticModel) else model.heads[task]


def _temperature_list(tasks: Sequence[int], temperatures: Mapping[int, float] | None) -> list[float] | None:
    if temperatures is None:
        return None
    if unknown := sorted(set(temperatures) - set(tasks)):
        raise InputError(
            f"temperatures given for tasks {unknown} that do not answer; answering tasks: {tasks}"
        )
    return [float(temperatures.get(t, 1.0)) for t in tasks]


@dataclass(frozen=True)
class FeatureGaussians:
    """One task's Gaussians per feature layer (float64, CPU): class means, the shared precision, and the
    mean and deviation of the distances on the training data they were fitted on."""

    means: list[torch.Tensor]  # per layer [C, d_l]
    precisions: list[torch.Tensor]  # per layer [d_l, d_l]: the inverse of the shrunk shared covariance
    center: torch.Tensor  # [L]
    spread: torch.Tensor  # [L]

    def distances(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """min_c (f_l - mu_c)^T P_l (f_l - mu_c) per row and layer: [B, L]."""
        widths = [m.shape[1] for m in self.means]
        if [f.shape[1] for f in features] != widths:
            raise InputError(
                f"these Gaussians were fitted on feature layers of widths {widths}, got "
                f"{[f.shape[1] for f in features]}; fit them on the model that answers "
                "(a pruned task model has fewer features than its HAT model)"
            )
        cols = []
        for f, means, precision in zip(features, self.means, self.precisions, strict=True):
            diff = f.double().cpu()[:, None, :] - means[None]
            cols.append(((diff @ precision) * diff).sum(-1).min(1).values)
        return torch.stack(cols, 1)

    def score(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """-sum over layers of the standardized distances [B]: higher = more typical of the task."""
        return -((self.distances(features) - self.center) / self.spread).sum(1)


Gaussians = Mapping[int, FeatureGaussians]


def _float64(logits: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [z.double().cpu().numpy() for z in logits]


def _scores(
    tasks: Sequence[int],
    features: Sequence[Sequence[torch.Tensor]],
    logits: Sequence[np.ndarray],
    rule: str,
    temperatures: Mapping[int, float] | None,
    gaussians: Gaussians | None,
    heads: Any = None,
) -> np.ndarray:
    """Scores [B, T] (float64, higher = more likely) of the answering tasks under ``rule``; ``logits``
    as float64 arrays (:func:`_float64`)."""
    if rule == LIKELIHOOD_RATIO:
        if heads is None:
            raise InputError(
                f"rule {LIKELIHOOD_RATIO!r} needs each task's head: pass heads=fit_likelihood_ratio(...) "
                "(hatzoo.likelihood_ratio) or load a release that carries them"
            )
        return torch.stack([heads.score(t, f) for t, f in zip(tasks, features, strict=True)], 1).numpy()
    if rule != FEATURE_RULE:
        if rule not in RULES:
            raise InputError(f"unknown task-inference rule {rule!r}; choose one of {', '.join(ALL_RULES)}")
        return task_scores(logits, rule, _temperature_list(tasks, temperatures))
    fitted = gaussians or {}
    if missing := sorted(set(tasks) - set(fitted)):
        raise InputError(
            f"rule {FEATURE_RULE!r} needs the feature Gaussians of tasks {missing}: pass "
            "gaussians=fit_feature_gaussians(model, {task: (x, y) of its training data})"
        )
    return torch.stack([fitted[t].score(f) for t, f in zip(tasks, features, strict=True)], 1).numpy()


def predict(
    model: Predictor,
    x: Any,
    rule: str | None = None,
    temperatures: Mapping[int, float] | None = None,
    gaussians: Gaussians | None = None,
    heads: Any = None,
) -> TaskPrediction:
    """Answer ``x`` without a task id: run every task, infer each row's task with ``rule``, give its label.

    ``rule`` defaults to ``likelihood_ratio`` for a model that carries its heads, else ``energy``.
    ``temperatures`` maps task ids to fitted temperatures (:func:`fit_temperatures`); missing ones are 1.
    ``gaussians`` (:func:`fit_feature_gaussians`) is what the ``mahalanobis`` rule reads, ``heads``
    (``hatzoo.likelihood_ratio.fit_likelihood_ratio``) what ``likelihood_ratio`` reads, the model's own
    by default. ``x`` is a normalized float batch, or images (paths, PIL images, uint8 arrays) that the
    model's data config prepares (:func:`hatzoo.images.to_batch`).
    """
    heads = heads if heads is not None else getattr(model, "ratio_heads", None)
    rule = rule or (LIKELIHOOD_RATIO if heads is not None else DEFAULT_RULE)
    if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
        data_config = model.data_config if isinstance(model, HATModel) else model.task_models[0].data_config
        weight = next(model.parameters())
        x = to_batch(x, data_config).to(weight.device, weight.dtype)
    tasks, features, logits = task_outputs(model, x, layers=_needs_layers(rule, heads))
    scores = _scores(tasks, features, _float64(logits), rule, temperatures, gaussians, heads)
    best = choose(scores)
    ids = torch.tensor([tasks[c] for c in best], dtype=torch.long)
    stacked = [logits[c][i] for i, c in enumerate(best)]
    classes = torch.tensor([int(z.argmax()) for z in stacked], dtype=torch.long)
    labels = [_labels(model, int(t))[int(k)] for t, k in zip(ids, classes, strict=True)]
    return TaskPrediction(ids, classes, labels, torch.from_numpy(scores), list(logits), tasks)


def _needs_layers(rule: str, heads: Any) -> bool:
    """Whether ``rule`` reads the pooled feature layers, not only the final features."""
    return rule == FEATURE_RULE or (
        rule == LIKELIHOOD_RATIO and heads is not None and heads.config.layers == "all"
    )


def _batches(data: LabelledData, size: int = 512) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``data``: (x, y) tensors are cut into runs of ``size`` rows, batches pass through."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]
    return data


def _check_fit_data(model: Predictor, data: Mapping[int, LabelledData], what: str) -> list[int]:
    tasks = active_tasks(model)
    if missing := sorted(set(tasks) - set(data)):
        raise InputError(f"no {what} data for tasks {missing}; give (x, y) for every answering task")
    if model.training:
        raise InputError(f"fit on the binary masks: call model.eval() before fitting {what} statistics")
    return tasks


def _task_rows(
    model: Predictor, data: LabelledData, task: int, layers: bool
) -> Iterable[tuple[list[torch.Tensor], torch.Tensor]]:
    """(features, labels) per batch of one task's data, labels checked against its class count."""
    classes = len(_labels(model, task))
    for xb, yb in _batches(data):
        y = yb.long().cpu()
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise InputError(f"task {task} has {classes} classes; its labels must be in [0, {classes})")
        yield _features(model, xb, task, layers), y


@torch.no_grad()
def fit_temperatures(model: Predictor, validation: Mapping[int, LabelledData]) -> dict[int, float]:
    """Per-task temperature minimizing the NLL of the task's own head on its validation data.

    ``validation[t]`` is ``(x, y)`` tensors (run 512 rows at a time) or an iterable of such batches (a
    DataLoader), held out from task t's *training* data; labels are class indices within the task. The
    search runs over a grid of log T (T from 0.05 to 20), so it is deterministic and needs no gradient.
    """
    out = {}
    for t in _check_fit_data(model, validation, "validation"):
        head = _head(model, t)
        rows = [(head(f[-1]).double().cpu(), y) for f, y in _task_rows(model, validation[t], t, False)]
        if not rows:
            raise InputError(f"the validation data of task {t} is empty")
        z, y = (torch.cat(v) for v in zip(*rows, strict=True))
        nll = torch.stack([F.cross_entropy(z / torch.exp(lt), y) for lt in _LOG_T_GRID])
        out[t] = float(torch.exp(_LOG_T_GRID[int(nll.argmin())]))
    return out


@torch.no_grad()
def fit_feature_gaussians(
    model: Predictor, training: Mapping[int, LabelledData], shrinkage: float = 1e-3
) -> dict[int, FeatureGaussians]:
    """Each task's Gaussians per feature layer, for the ``mahalanobis`` rule.

    ``training[t]`` is ``(x, y)`` (run 512 rows at a time) or an iterable of batches of task t's training
    data (labels are class indices within the task); every class needs at least one row. Each covariance
    is shrunk towards ``shrinkage`` times its mean variance on the diagonal, so features that the task's
    masks switch off (constant) keep it invertible. Computed in float64; the features of all rows are
    held at once.
    """
    if not shrinkage > 0:
        raise InputError(f"shrinkage must be > 0, got {shrinkage!r}")
    out = {}
    for t in _check_fit_data(model, training, "training"):
        rows = [([v.double().cpu() for v in f], y) for f, y in _task_rows(model, training[t], t, True)]
        if not rows:
            raise InputError(f"the training data of task {t} is empty")
        y = torch.cat([labels for _, labels in rows])
        n = torch.bincount(y, minlength=len(_labels(model, t)))
        if not bool((n > 0).all()):
            raise InputError(f"the training data of task {t} needs at least one row of each of its classes")
        layers = [torch.cat(f) for f in zip(*(features for features, _ in rows), strict=True)]
        means, precisions = [], []
        for f in layers:
            mu = torch.zeros(len(n), f.shape[1], dtype=f.dtype).index_add_(0, y, f) / n[:, None]
            centred = f - mu[y]
            cov = centred.T @ centred / len(f)
            cov += shrinkage * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(len(cov), dtype=cov.dtype)
            means.append(mu)
            precisions.append(torch.linalg.inv(cov))
        fitted = FeatureGaussians(means, precisions, torch.zeros(len(layers)), torch.ones(len(layers)))
        d = fitted.distances(layers)
        out[t] = FeatureGaussians(means, precisions, d.mean(0), d.std(0).clamp_min(1e-12))
    return out


@dataclass
class AgnosticAccuracy:
    """Fractions of rows: task inferred right, class right without a task id, and class right given it."""

    task: float
    class_incremental: float
    task_incremental: float
    rows: int


@torch.no_grad()
def evaluate(
    model: Predictor,
    x: torch.Tensor,
    task: torch.Tensor,
    target: torch.Tensor,
    rules: Sequence[str] | None = None,
    temperatures: Mapping[int, float] | None = None,
    batch_size: int = 256,
    gaussians: Gaussians | None = None,
    heads: Any = None,
) -> dict[str, AgnosticAccuracy]:
    """Accuracy per rule on (x, true task id, true class within the task); the tasks run once per batch.

    ``rules`` defaults to the logit rules, with ``mahalanobis`` when ``gaussians`` are given and
    ``likelihood_ratio`` when ``heads`` are (or the model carries them).
    Class-incremental: right task and right class (with disjoint classes per task, the right global
    class); task-incremental: the true task's arg-max class, the ceiling of the two.
    """
    if not len(x) == len(task) == len(target):
        raise InputError(
            f"x, task and target must have one row each, got {len(x)}, {len(task)}, {len(target)}"
        )
    heads = heads if heads is not None else getattr(model, "ratio_heads", None)
    if rules is None:
        rules = (*RULES, *[FEATURE_RULE] * (gaussians is not None), *[LIKELIHOOD_RATIO] * (heads is not None))
    hits = {rule: torch.zeros(3, dtype=torch.long) for rule in rules}
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        layers = any(_needs_layers(rule, heads) for rule in rules)
        tasks, features, logits = task_outputs(model, x[rows], layers=layers)
        t, y = task[rows].long().cpu(), target[rows].long().cpu()
        if unknown := sorted(set(t.tolist()) - set(tasks)):
            raise InputError(f"true tasks {unknown} do not answer; answering tasks: {tasks}")
        column = [tasks.index(v) for v in t.tolist()]
        given = torch.stack([logits[c][i].argmax().cpu() for i, c in enumerate(column)])
        z = _float64(logits)
        for rule in rules:
            best = choose(_scores(tasks, features, z, rule, temperatures, gaussians, heads))
            right = torch.from_numpy(best) == torch.tensor(column)
            inferred = torch.stack([logits[c][i].argmax().cpu() for i, c in enumerate(best)])
            hits[rule] += torch.stack([right.sum(), (right & (inferred == y)).sum(), (given == y).sum()])
    n = max(len(x), 1)
    return {
        rule: AgnosticAccuracy(*(float(h) / n for h in v.tolist()), rows=len(x)) for rule, v in hits.items()
    }


def global_class(prediction: TaskPrediction, classes: Mapping[int, Sequence[int]]) -> torch.Tensor:
    """Global class ids [B] of a prediction, given each task's global classes in label order."""
    return torch.tensor(
        [classes[int(t)][int(k)] for t, k in zip(prediction.task, prediction.class_index, strict=True)]
    )


@torch.no_grad()
def agnostic_macs(model: Predictor, sample_shape: Sequence[int]) -> dict[int, int]:
    """Multiply-adds of one sample per answering task, with masked units removed; their sum is the cost."""
    x = torch.zeros(1, *sample_shape)
    out = {}
    for t in active_tasks(model):
        net = model.task_model(t) if isinstance(model, TaskAgnosticModel) else model.specialize(t)
        param = next(net.parameters())
        out[t] = count_macs(net, lambda net=net, p=param: net(x.to(p.device, p.dtype)))
    return out


class PredictMixin:
    """``model.predict(x)`` for ``hatzoo.HATModel``: answering without a task id, this layer's method."""

    def predict(self: HATModel, x: torch.Tensor, **options: Any) -> TaskPrediction:
        """Answer ``x`` without a task id: every task runs, a rule infers the task (see :func:`predict`)."""
        return predict(self, x, **options)
