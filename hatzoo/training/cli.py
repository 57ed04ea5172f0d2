"""``hatzoo train``: train a zoo recipe (a card, or flags) task after task, with resume.

    hatzoo train --card cards/hat-vit-small.yaml --out runs/hat-vit-small
    hatzoo train --arch hat-vit-tiny --benchmark split-mnist --epochs 1 --max-train-per-task 500 --out runs/x
    torchrun --nproc_per_node 2 -m hatzoo.training.cli --card cards/hat-vit-demo.yaml --out runs/demo

Bad inputs (unknown card, unknown benchmark, missing data, bad values) print one clear line and
return exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from hatzoo.errors import DataError, HATError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hatzoo train", description="Train a HAT model task after task.")
    p.add_argument("--card", help="a recipe card: cards/<model>.yaml, or a zoo name (hat-vit-small)")
    p.add_argument("--arch", help="a hatzoo.create_model name (without --card)")
    p.add_argument("--name", help="model name (default: the card's, or the arch)")
    p.add_argument("--model-args", help='JSON or YAML mapping, e.g. \'{"img_size": 28, "in_chans": 1}\'')
    p.add_argument("--benchmark", help="a hatzoo.data benchmark name (split-fashion-mnist, split-mnist, ...)")
    p.add_argument("--benchmark-seed", type=int)
    p.add_argument("--max-train-per-task", type=int, help="seeded class-balanced training subset per task")
    p.add_argument("--max-tasks", type=int, help="train only the first N tasks")
    for flag, kind in (
        ("epochs", int),
        ("batch-size", int),
        ("lr", float),
        ("momentum", float),
        ("weight-decay", float),
        ("clip-grad", float),
        ("seed", int),
    ):
        p.add_argument(f"--{flag}", type=kind)
    p.add_argument("--mask-lr", type=float, help="separate learning rate for the gate embeddings")
    p.add_argument("--lr-schedule", help="within each task: constant or cosine")
    p.add_argument("--scale-ramp", help="the 1/smax -> smax ramp spans each epoch or the whole task")
    p.add_argument("--optimizer", help="sgd, adam or adamw")
    p.add_argument("--schedule", help="mask-scale schedule: linear, exponential, cosine, constant")
    p.add_argument("--smax", type=float)
    p.add_argument("--reg-c", type=float)
    p.add_argument("--out", help="output folder (default runs/<name>)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming from checkpoints")
    p.add_argument("--no-joint", action="store_true", help="skip the joint-training upper bound")
    p.add_argument("--stop-after", type=int, help="stop after this task (0-based); rerun to continue")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (1 is much faster than 2 when another process shares the cores)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def _build_recipe(args: argparse.Namespace):
    from hatzoo.training.recipe import Recipe, RecipeError, load_recipe

    if args.card:
        recipe = load_recipe(args.card)
    elif args.arch:
        recipe = Recipe.from_dict({"name": args.name or args.arch, "arch": args.arch}, "<command line>")
    else:
        raise RecipeError("give a recipe card with --card cards/<model>.yaml, or an architecture with --arch")
    data = recipe.to_dict()
    if args.name:
        data["name"] = args.name
    if args.model_args:
        try:
            extra = yaml.safe_load(args.model_args)
        except yaml.YAMLError as err:
            raise RecipeError(f"--model-args is not a JSON/YAML mapping: {err}") from err
        if not isinstance(extra, dict):
            raise RecipeError(f"--model-args must be a mapping, got {args.model_args!r}")
        data["model_args"] = {**data["model_args"], **extra}
    overrides = {
        "benchmark": {"name": args.benchmark, "seed": args.benchmark_seed, "max_tasks": args.max_tasks},
        "recipe": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "momentum": args.momentum,
            "weight_decay": args.weight_decay,
            "clip_grad": args.clip_grad,
            "seed": args.seed,
            "optimizer": args.optimizer,
            "schedule": args.schedule,
            "mask_lr": args.mask_lr,
            "lr_schedule": args.lr_schedule,
            "scale_ramp": args.scale_ramp,
        },
        "hat": {"smax": args.smax, "reg_c": args.reg_c},
    }
    for section, values in overrides.items():
        data[section].update({k: v for k, v in values.items() if v is not None})
    if args.max_train_per_task is not None:
        data["benchmark"]["max_train_per_task"] = args.max_train_per_task
    if args.no_joint:
        data["recipe"]["joint"] = False
    return Recipe.from_dict(data, recipe.source)


def train_command(argv: list[str]) -> int:
    """Run ``hatzoo train`` with ``argv``; 0 on success, 2 on a bad input (message on stderr)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse prints its own message
        return int(exit_.code or 0)
    try:
        from hatzoo.training.loop import train_sequence

        recipe = _build_recipe(args)
        if args.threads is not None:
            if args.threads < 1:
                raise HATError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        if args.card and not Path(args.card).is_file() and args.card.endswith((".yaml", ".yml")):
            raise HATError(f"card file {args.card} does not exist")
        out = Path(args.out) if args.out else Path("runs") / recipe.name
        results = train_sequence(
            recipe,
            out,
            resume=not args.no_resume,
            progress=not args.no_progress,
            device=args.device,
            stop_after=args.stop_after,
        )
    except DataError as err:  # unknown benchmark or missing data: hatzoo.data says how to get it
        print(f"hatzoo train: {err}", file=sys.stderr)
        return EXIT_USAGE
    except HATError as err:
        print(f"hatzoo train: {err}", file=sys.stderr)
        return EXIT_USAGE
    summary = {
        "out": str(out),
        "tasks_trained": results.num_trained,
        "complete": results.complete,
        "average_accuracy": results.average_accuracy,
        "bwt": results.bwt,
        "joint_average_accuracy": results.joint_average,
    }
    print(json.dumps(summary))
    return 0


def main() -> None:
    """Entry point for ``python -m hatzoo.training.cli`` (and torchrun)."""
    raise SystemExit(train_command(sys.argv[1:]))


if __name__ == "__main__":
    main()
