"""``hatzoo train``: train a zoo recipe (a card, or flags) task after task, with resume.

Prints one accuracy line as each task ends and a summary in percent; bad inputs (unknown card,
benchmark or device, missing data, bad values) print one clear line and return exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from hatzoo.errors import HATError, InputError

EXIT_USAGE = 2
EXAMPLES = """examples:
  hatzoo train --card hat-vit-small --out runs/hat-vit-small --stop-after 0   # task 0 now; rerun to go on
  hatzoo train --card hat-vit-demo --out runs/demo         # a zoo card, about a minute; rerun to resume
  hatzoo train --card hat-vit-demo --out runs/demo-gpu --device cuda --amp bf16       # on a GPU
  hatzoo train --arch hat-vit-tiny --benchmark split-mnist --max-tasks 2 --max-train-per-task 500 --no-joint
  torchrun --nproc_per_node 2 -m hatzoo.training.cli --card hat-vit-demo --out runs/ddp --max-tasks 2
"""
# flag, card section, key, type, help; each overrides the card (or the defaults without one)
OVERRIDES = (
    (
        "--benchmark",
        "benchmark",
        "name",
        str,
        "hatzoo.data benchmark (split-fashion-mnist, split-mnist, ...)",
    ),
    ("--benchmark-seed", "benchmark", "seed", int, "seed of the class order and training subsets"),
    ("--max-train-per-task", "benchmark", "max_train_per_task", int, "seeded class-balanced training subset"),
    ("--max-tasks", "benchmark", "max_tasks", int, "train only the first N tasks"),
    ("--validation", "benchmark", "validation", float, "share of each task's training split held out"),
    ("--epochs", "recipe", "epochs", int, "epochs per task"),
    ("--batch-size", "recipe", "batch_size", int, "global batch size (split over DDP ranks)"),
    ("--optimizer", "recipe", "optimizer", str, "sgd, adam or adamw"),
    ("--lr", "recipe", "lr", float, "learning rate"),
    ("--momentum", "recipe", "momentum", float, "SGD momentum"),
    ("--weight-decay", "recipe", "weight_decay", float, "weight decay"),
    ("--clip-grad", "recipe", "clip_grad", float, "gradient-norm clip"),
    ("--seed", "recipe", "seed", int, "seed of initialisation and shuffling"),
    ("--mask-lr", "recipe", "mask_lr", float, "learning rate of the gate embeddings"),
    ("--lr-schedule", "recipe", "lr_schedule", str, "within each task: constant or cosine"),
    ("--scale-ramp", "recipe", "scale_ramp", str, "the 1/smax -> smax ramp spans each epoch or the task"),
    ("--replay", "recipe", "replay", int, "images in the replay buffer for answering without a task id"),
    ("--ood", "recipe", "ood", float, "weight of the loss that rejects the buffer's earlier tasks"),
    ("--schedule", "recipe", "schedule", str, "mask-scale schedule: linear, exponential, cosine, constant"),
    ("--smax", "hat", "smax", float, "largest gate scale"),
    ("--reg-c", "hat", "reg_c", float, "strength of the mask regularizer"),
)


def _parser() -> argparse.ArgumentParser:
    from hatzoo.training.common import PRECISIONS
    from hatzoo.training.loop import CHECKPOINT_EVERY
    from hatzoo.training.recipe import Recipe

    p = argparse.ArgumentParser(
        prog="hatzoo train",
        description="Train a HAT model task after task, with resumable checkpoints within and after each "
        "task: run the same command again to go on.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--card", help="recipe card: a YAML path, or a zoo name like hat-vit-small (default: none)"
    )
    p.add_argument("--arch", help="a hatzoo.create_model name, to train without a card (default: none)")
    p.add_argument("--name", help="model name (default: the card's, or --arch)")
    p.add_argument(
        "--model-args", help="JSON/YAML mapping added to the card's, e.g. '{in_chans: 1}' (default: none)"
    )
    defaults = Recipe(name="", arch="")
    for flag, section, key, kind, text in OVERRIDES:
        value = getattr(getattr(defaults, section), key)
        shown = "none" if value is None else value
        help = f"{text} (default: the card's, else {shown})"
        p.add_argument(flag, type=kind, dest=f"{section}.{key}", metavar=flag[2:].upper(), help=help)
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/<name>)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument(
        "--amp",
        default="fp32",
        choices=PRECISIONS,
        help="bf16: autocast with fp32 weights (default: %(default)s)",
    )
    p.add_argument(
        "--no-resume", action="store_true", help="start over instead of resuming (default: resume)"
    )
    p.add_argument(
        "--no-joint", action="store_true", help="skip the joint-training bound (default: the card's)"
    )
    p.add_argument(
        "--stop-after", type=int, help="stop after this task, 0-based; rerun to go on (default: none)"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=CHECKPOINT_EVERY,
        metavar="STEPS",
        help="write a resumable checkpoint every STEPS optimizer steps within a task; 0: only after each "
        "task (default: %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, help="CPU threads for torch; 1 when sharing cores (default: torch's)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")
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
    for _, section, key, _, _ in OVERRIDES:
        value = getattr(args, f"{section}.{key}")
        if value is not None:
            data[section][key] = value
    if args.no_joint:
        data["recipe"]["joint"] = False
    return Recipe.from_dict(data, recipe.source)


def _print_task(t: int, model, results) -> None:
    """``on_task_end``: the accuracy on every task so far, in percent (main rank only)."""
    from hatzoo.training import ddp
    from hatzoo.training.report import task_title

    if ddp.init_distributed().is_main:
        row = results.accuracy[t][: t + 1]
        print(
            f"task {t + 1}/{len(results.tasks)} ({task_title(results.tasks[t])}) done in "
            f"{results.seconds[t]:.1f} s; accuracy % on tasks 1-{t + 1}: "
            f"{' '.join(f'{100 * a:.2f}' for a in row)}; average {100 * sum(row) / len(row):.2f}%",
            flush=True,
        )


def _summary(results, out: Path) -> str:
    """What a person reads at the end: average accuracy, BWT and the joint bound in percent, and where."""
    pct = lambda v, unit="%": "n/a" if v is None else f"{100 * v:.2f}{unit}"  # noqa: E731
    done = f"model ready: hatzoo push {out / 'model'} ORG/{results.name} --git-mirror DIR"
    return (
        f"{results.name}: {results.num_trained} of {len(results.tasks)} tasks trained, outputs in {out}\n"
        f"average accuracy {pct(results.average_accuracy)}, backward transfer {pct(results.bwt, ' points')},"
        f" joint-training bound {pct(results.joint_average)}\n"
        + (done if results.complete else "stopped early: run the same command again to train the rest")
    )


def train_command(argv: list[str]) -> int:
    """Run ``hatzoo train`` with ``argv``; 0 on success, 2 on a bad input (message on stderr)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse prints its own message
        return int(exit_.code or 0)
    try:
        from hatzoo.training.loop import train_sequence

        recipe = _build_recipe(args)
        if args.threads is not None:
            if args.threads < 1:
                raise InputError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        out = Path(args.out) if args.out else Path("runs") / recipe.name
        results = train_sequence(
            recipe,
            out,
            resume=not args.no_resume,
            progress=not args.no_progress,
            device=args.device,
            amp=args.amp,
            stop_after=args.stop_after,
            on_task_end=_print_task,
            checkpoint_every=args.checkpoint_every,
        )
    except HATError as err:
        print(f"hatzoo train: {err}", file=sys.stderr)
        return EXIT_USAGE
    from hatzoo.training import ddp

    if ddp.init_distributed().is_main:
        print(_summary(results, out))
    return 0


def main() -> None:
    """Entry point for ``python -m hatzoo.training.cli`` (and torchrun)."""
    raise SystemExit(train_command(sys.argv[1:]))


if __name__ == "__main__":
    main()
