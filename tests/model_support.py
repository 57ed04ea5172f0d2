"""What the tests share: a tiny ViT, trained tasks, the optimizers, `hatzoo train`'s tiny-ViT flags, and a
new user's environment."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn import functional as F

import hatzoo
from hatzoo.training import Recipe

# `hatzoo train` flags for a one-block ViT on two Split-MNIST tasks of 64 images, one epoch each
TINY_VIT_TRAIN_ARGS = [
    "--arch",
    "hat-vit-tiny",
    "--model-args",
    "{img_size: 28, patch_size: 7, in_chans: 1, embed_dim: 32, depth: 1, num_heads: 2}",
    "--benchmark",
    "split-mnist",
    "--max-train-per-task",
    "64",
    "--max-tasks",
    "2",
    "--epochs",
    "1",
    "--batch-size",
    "32",
]


# one optimizer per kind of state a locked entry could be moved by: momentum, Adam moments, weight decay
OPTIMIZERS = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=2e-3),
    "adamw-decay": lambda params: torch.optim.AdamW(params, lr=2e-3, weight_decay=0.5),
}


def vit() -> hatzoo.HATModel:
    """A two-block hat-vit-tiny for 1x16x16 inputs."""
    return hatzoo.create_model("hat-vit-tiny", img_size=16, patch_size=4, in_chans=1, depth=2)


def tiny_mlp() -> hatzoo.HATModel:
    """A plain Sequential for 1x16x16 inputs: two masked Linear layers, one with a per-task BatchNorm1d."""
    return hatzoo.hatify(
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(256, 64),
            nn.ReLU(),
            nn.Linear(64, 48),
            nn.BatchNorm1d(48),
            nn.ReLU(),
            nn.Linear(48, 10),
        )
    )


# one model of each policy, all for 1x16x16 inputs
ARCHS = {"vit": vit, "resnet": lambda: hatzoo.create_model("hat-resnet18", in_chans=1), "mlp": tiny_mlp}


def train_tasks(model: hatzoo.HATModel, num_tasks: int, x: torch.Tensor, seed: int = 0) -> hatzoo.HATModel:
    """Add and train ``num_tasks`` two-class tasks ("left", "right") on random labels for ``x``; eval mode."""
    torch.manual_seed(seed)
    for _ in range(num_tasks):
        task = model.add_task(num_classes=2, labels=["left", "right"])
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        y = torch.randint(0, 2, (x.shape[0],))
        for step in range(4):
            scale = hatzoo.schedules.get_schedule("linear", 400)(step, 4)
            loss = F.cross_entropy(model(x, task=task, scale=scale), y) + model.regularization(task=task)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.end_task(task)
    return model.eval()


def train_random_tasks(
    model: hatzoo.HATModel,
    classes: tuple[int, ...],
    shape: tuple[int, ...],
    *,
    steps: int,
    batch: int,
    lr: float,
) -> hatzoo.HATModel:
    """Add a task of ``k`` classes per entry of ``classes`` and train it ``steps`` Adam steps on random inputs
    and labels (masks start from N(0, 1), so they end partial); eval mode. The caller seeds torch."""
    for n, k in enumerate(classes):
        task = model.add_task(num_classes=k, labels=[f"t{n}-c{i}" for i in range(k)])
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        for step in range(steps):
            x, y = torch.randn(batch, *shape), torch.randint(0, k, (batch,))
            logits = model(x, task=task, scale=50.0 * (step + 1))
            loss = F.cross_entropy(logits, y) + model.regularization(task=task)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.end_task(task)
    return model.eval()


def fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: no HF_* settings at all, an empty HF_HOME, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HATZOO_"))}
    home = tmp_path / "hf-home"
    home.mkdir(exist_ok=True)
    env.update(HF_HOME=str(home), OMP_NUM_THREADS="1", **extra)
    return env


def task_logits(model: hatzoo.HATModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Every task's eval-mode logits on ``x``, in task order."""
    model.eval()
    with torch.no_grad():
        return [model(x, task=t) for t in range(model.num_tasks)]


# a tiny training recipe (three Split-MNIST tasks of 200 images) and the MLP that `model_factory` swaps in
def mlp() -> hatzoo.HATModel:
    """A tiny HAT MLP for 1x28x28 inputs (fast enough to train three tasks in a second or two)."""
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )
    return hatzoo.hatify(net)


TINY = """\
name: tiny
arch: hat-vit-tiny  # replaced by the MLP factory; kept valid for the card
benchmark: {name: split-mnist, seed: 0, max_train_per_task: 200, max_tasks: 3, max_test_per_task: 200}
recipe: {optimizer: sgd, lr: 0.05, momentum: 0.9, epochs: 2, batch_size: 32, seed: 0, joint: false}
hub: {repo_id: test-org/tiny}
description: tiny test recipe
"""


def tiny_recipe(**recipe) -> Recipe:
    data = yaml.safe_load(TINY)
    data["recipe"].update(recipe)
    return Recipe.from_dict(data, "<test>")


# The body of a script that SIGKILLs itself at its kill_at-th file-system step (a file opened for writing,
# a folder made, renamed, linked or removed), counted by an audit hook; the script defines kill_at first.
DIE_AT_FILE_STEP = textwrap.dedent(
    """
    seen = 0

    def hook(event, args):
        global seen
        writing = event == "open" and isinstance(args[1], str) and "w" in args[1]
        if writing or event in ("os.mkdir", "os.rename", "os.link", "shutil.rmtree", "ctypes.call_function"):
            seen += 1
            if seen == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    """
)
