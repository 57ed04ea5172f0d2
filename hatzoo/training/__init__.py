"""Training the zoo: recipes from cards, sequential HAT training with checkpoints and resume, reports.

    from hatzoo.training import load_recipe, train_sequence
    results = train_sequence(load_recipe("cards/hat-vit-small.yaml"), "runs/hat-vit-small")
    results.accuracy, results.average_accuracy, results.bwt

``train_sequence(..., device="cuda", amp="bf16")`` trains under bf16 autocast with float32 weights.
Runs unchanged under ``torchrun --nproc_per_node N`` (see :mod:`hatzoo.training.ddp`).
"""

from hatzoo.training.common import Runtime
from hatzoo.training.joint import JointResults, train_joint
from hatzoo.training.loop import evaluate, train_sequence
from hatzoo.training.metrics import Results, backward_transfer
from hatzoo.training.recipe import Recipe, RecipeError, load_recipe
from hatzoo.training.report import card_results, render_card, write_card_results, write_report

__all__ = [
    "JointResults",
    "Recipe",
    "RecipeError",
    "Results",
    "Runtime",
    "backward_transfer",
    "card_results",
    "evaluate",
    "load_recipe",
    "render_card",
    "train_joint",
    "train_sequence",
    "write_card_results",
    "write_report",
]
