"""Likelihood-ratio task prediction: each task scores log p_t(x) / p_rest(x), the best score answers.

A task's subnetwork is trained on its own classes only, so its logits cannot say "not mine". What
can is a comparison of two densities in the task's own feature space: ``p_t``, its training data, and
``p_rest``, everything else, which a replay buffer samples (its images of the other tasks). A classifier
trained to tell the two apart with equal class weights estimates their log ratio: its logit is
``log p_t(x) - log p_rest(x)`` (the density-ratio trick). Each task gets one such head, a small MLP on the
task's pooled features, fitted when the buffer has every task's images, so an earlier task's head is
fitted again (back-updated) with the images of the tasks that came after it. The features of an ended
task never change, so refitting its head changes no task-given answer.

The head reads the task's feature layers (the stages timm lists in ``feature_info``, pooled as in
``hatzoo.task_inference``) and its final features (``layers="all"``), or the final features only
(``layers="final"``), standardized by their mean and deviation on the task's training data. Which
layers, the width, the weight decay and the steps are a ``RatioConfig``, chosen on a validation split of
the training data (``bench/bench_task_inference.py``). Heads are saved as safetensors with their config
in the header, never pickled, and export bakes each task's head into its ONNX graph as a second output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from hatzoo.checkpoint_files import read_tensors, write_tensors
from hatzoo.errors import CheckpointError, InputError
from hatzoo.replay import ReplayBuffer
from hatzoo.task_inference import (
    LabelledData,
    Predictor,
    _batches,
    _check_fit_data,
    _features,
    pooled_features,
)

RATIO_FILE = "task_free.safetensors"
_FORMAT = "hatzoo.likelihood_ratio/1"
LAYERS = ("all", "final")


@dataclass(frozen=True)
class RatioConfig:
    """How the heads are built and fitted (chosen on a validation split of the training data)."""

    layers: str = "all"
    hidden: int = 256
    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers not in LAYERS:
            raise InputError(f"layers must be one of {LAYERS}, got {self.layers!r}")
        for name in ("hidden", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an int >= 1, got {value!r}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise InputError(f"lr must be > 0 and weight_decay >= 0, got {self.lr!r}, {self.weight_decay!r}")


def head_input(features: list[torch.Tensor], layers: str) -> torch.Tensor:
    """What a head reads from one task's features (``_features`` output): every layer, or the last."""
    return torch.cat(features, 1) if layers == "all" else features[-1]


class RatioHead(nn.Module):
    """One task's log p_t(x) / p_rest(x) from its features [B, width]: standardize, then an MLP."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.scale)[:, 0]


class RatioHeads(nn.Module):
    """Every answering task's head, by task id, and the config they were fitted with."""

    def __init__(self, heads: Mapping[int, RatioHead], config: RatioConfig) -> None:
        super().__init__()
        self.config = config
        self.heads = nn.ModuleDict({str(t): h for t, h in sorted(heads.items())})

    @property
    def tasks(self) -> list[int]:
        return [int(t) for t in self.heads]

    def head(self, task: int) -> RatioHead:
        if str(task) not in self.heads:
            raise InputError(f"no likelihood-ratio head for task {task}; heads exist for tasks {self.tasks}")
        return self.heads[str(task)]

    @torch.no_grad()
    def score(self, task: int, features: list[torch.Tensor]) -> torch.Tensor:
        """Task ``task``'s log-ratio [B] (float64) from its ``_features`` output."""
        head = self.head(task)
        x = head_input(features, self.config.layers).to(head.mean.device, head.mean.dtype)
        return head(x).double().cpu()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """One safetensors file: every head's tensors, the config and widths in the header."""
        tensors = {
            f"{t}.{k}": v.detach().cpu().contiguous()
            for t, h in self.heads.items()
            for k, v in h.state_dict().items()
        }
        widths = {t: int(h.mean.numel()) for t, h in self.heads.items()}
        meta = {"format": _FORMAT, "config": json.dumps(asdict(self.config)), "widths": json.dumps(widths)}
        path = Path(path)
        write_tensors(path, tensors, meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RatioHeads:
        """The heads ``save`` wrote (safetensors and JSON only)."""
        meta, tensors = read_tensors(path, "likelihood-ratio")
        if meta.get("format") != _FORMAT:
            raise CheckpointError(
                f"{path}: not hatzoo likelihood-ratio heads (format {meta.get('format')!r})"
            )
        try:
            raw = json.loads(meta["config"])
            config = RatioConfig(**{f.name: raw[f.name] for f in fields(RatioConfig)})
            widths = {int(t): int(w) for t, w in json.loads(meta["widths"]).items()}
        except (KeyError, ValueError, TypeError, InputError) as error:
            raise CheckpointError(f"{path}: the heads' header is damaged ({error})") from error
        heads = {}
        for t, width in widths.items():
            head = RatioHead(width, config.hidden)
            state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(t)}
            try:
                head.load_state_dict(state, strict=True)
            except RuntimeError as error:
                raise CheckpointError(
                    f"{path}: task {t}'s head does not match its header ({error})"
                ) from error
            heads[t] = head
        return cls(heads, config).eval()


def _head_inputs(model: Predictor, data: LabelledData | torch.Tensor, task: int, layers: str) -> torch.Tensor:
    """What task ``task``'s head reads for every row of ``data`` (images, (x, y), or batches of them)."""
    if isinstance(data, torch.Tensor):
        data = (data, torch.zeros(len(data), dtype=torch.long))
    param = next(model.parameters())
    with torch.no_grad():
        out = [
            head_input(_features(model, xb.to(param.device, param.dtype), task, layers == "all"), layers)
            .float()
            .cpu()
            for xb, _ in _batches(data)
        ]
    if not out:
        raise InputError(f"no rows to fit task {task}'s head on; give it images of its own and a buffer")
    return torch.cat(out)


def _fit_head(inside: torch.Tensor, outside: torch.Tensor, config: RatioConfig, task: int) -> RatioHead:
    """Balanced logistic regression through a small MLP: half of each batch from each side."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed * 1_000_003 + task)
        head = RatioHead(inside.shape[1], config.hidden)
    head.mean.copy_(inside.mean(0))
    head.scale.copy_(inside.std(0).clamp_min(1e-4))
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + task)
    optimizer = torch.optim.Adam(head.parameters(), config.lr, weight_decay=config.weight_decay)
    half = max(1, config.batch_size // 2)
    target = torch.cat([torch.ones(half), torch.zeros(half)])
    for _ in range(config.steps):
        rows_in = torch.randint(len(inside), (half,), generator=gen)
        rows_out = torch.randint(len(outside), (half,), generator=gen)
        logit = head(torch.cat([inside[rows_in], outside[rows_out]]))
        loss = nn.functional.binary_cross_entropy_with_logits(logit, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return head.eval()


def fit_likelihood_ratio(
    model: Predictor,
    buffer: ReplayBuffer,
    training: Mapping[int, LabelledData],
    config: RatioConfig | None = None,
) -> RatioHeads:
    """Each answering task's head, fitted on its training data (``training[t]``: (x, y) or batches)
    against the buffer's images of every other task, in that task's feature space.

    Run it when a task ends (the earlier tasks' heads are fitted again: back-updating) or once after the
    last task; ``model`` is the model that answers (a ``TaskAgnosticModel``: pruned features).
    """
    config = config or RatioConfig()
    tasks = _check_fit_data(model, training, "training")
    if missing := sorted(set(tasks) - set(buffer.tasks)):
        raise InputError(f"the replay buffer has no images of tasks {missing}; add each task when it ends")
    if len(tasks) < 2:
        raise InputError("a likelihood ratio needs at least two tasks: there is no 'rest' to compare with")
    heads = {}
    for t in tasks:
        inside = _head_inputs(model, training[t], t, config.layers)
        others = buffer.others(t)
        if not len(others):
            raise InputError(
                f"the buffer holds no image of a task other than {t}; give it room for at least one image "
                f"per class (capacity {buffer.capacity}, {len(buffer.counts())} classes)"
            )
        outside = _head_inputs(model, others, t, config.layers)
        heads[t] = _fit_head(inside, outside, config, t)
    return RatioHeads(heads, config).eval()


class ScoredTaskModel(nn.Module):
    """A task model that also returns its log-ratio: ``(logits [B, C], task_score [B])``, for export."""

    def __init__(self, task_model: nn.Module, head: RatioHead, layers: str) -> None:
        super().__init__()
        self.task_model, self.head, self.layers = task_model, head, layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.task_model
        features = pooled_features(net.forward_features, net.backbone, x, self.layers == "all")
        return net.head(features[-1]), self.head(head_input(features, self.layers))
