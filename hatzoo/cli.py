"""The ``hatzoo`` command: train, push, load, export, serve, info, list, and the end-to-end demo.

Each subcommand imports what it needs when it runs, so ``hatzoo serve`` never imports torch.
A user mistake prints one ``error:`` line that says what to do, and exits with code 2.
"""

from __future__ import annotations

import argparse
import pkgutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hatzoo import __version__
from hatzoo.errors import HATError

if TYPE_CHECKING:
    from hatzoo.card import CardResults

EXIT_USAGE = 2


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (where it has one) and keeps the examples' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def command_parser(name: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand's parser: shown defaults and an examples epilog."""
    return argparse.ArgumentParser(
        prog=f"hatzoo {name}",
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=HelpFormatter,
    )


def model_parser(name: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A parser for a command on one model: its ``model`` argument and ``--revision``."""
    p = command_parser(name, description, examples)
    p.add_argument("model", help="zoo name, Hub repo id or local folder")
    p.add_argument("--revision", help="branch, tag or commit (default: the card's pin, or main)")
    return p


def _push(argv: list[str]) -> int:
    from hatzoo.hub.push import PUSH_MESSAGE, publish_folder

    p = command_parser(
        "push",
        "Publish a checkpoint folder to the Hub: with git into a mirror (what olah serves) or a remote,\n"
        "else over HTTP to the Hub (huggingface.co, or HF_ENDPOINT) with --token or the logged-in token.",
        "  hatzoo push runs/demo/model me/hat-vit-demo --git-mirror hub-mirror   # after 'hatzoo train'\n"
        "  hatzoo push runs/demo/model me/hat-vit-demo --git-mirror hub-mirror --revision v1 --tag v1.0",
    )
    p.add_argument("folder", help="a folder written by save_pretrained (e.g. runs/<name>/model)")
    p.add_argument("repo_id", help="org/name on the Hub")
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--git-mirror",
        help="publish with git into this mirror folder (what olah serves) (default: $HATZOO_GIT_MIRROR)",
    )
    target.add_argument(
        "--remote-url",
        help="publish with git to this remote (needs git-lfs for http remotes) (default: none: HTTP)",
    )
    p.add_argument("--revision", default="main", help="branch to publish to")
    p.add_argument("--tag", help="also tag the commit (git paths) (default: no tag)")
    p.add_argument("--message", default=PUSH_MESSAGE, help="commit message")
    p.add_argument("--token", help="Hub token for the HTTP path (default: the logged-in one)")
    args = p.parse_args(argv)
    from hatzoo.checkpoint import load_pretrained

    folder = Path(args.folder)
    load_pretrained(folder)  # refuse to publish a folder that would not load
    sha = publish_folder(
        folder,
        args.repo_id,
        revision=args.revision,
        commit_message=args.message,
        git_mirror=args.git_mirror,
        remote_url=args.remote_url,
        tag=args.tag,
        token=args.token,
    )
    print(f"published {folder} as {args.repo_id}@{sha}")
    return 0


def _load(argv: list[str]) -> int:
    p = model_parser(
        "load",
        "Load a model (the full HAT model, or one task's pruned model) and optionally predict.",
        "  hatzoo load hat-vit-small\n"
        "  hatzoo load hat-vit-small --task 3 --predict batch.npy   # batch.npy: [B, 1, 28, 28], normalized",
    )
    p.add_argument("--task", type=int, help="load task T's pruned model (default: the full HAT model)")
    p.add_argument(
        "--predict",
        help="a .npy batch [B, C, H, W] of normalized images to classify (default: no prediction)",
    )
    args = p.parse_args(argv)
    import numpy as np
    import torch

    import hatzoo

    model = hatzoo.load(args.model, task=args.task, revision=args.revision)
    if args.task is None:
        print(f"{args.model}: full HAT model, {model.num_tasks} tasks")
        return 0
    kept = sum(k for k, _ in model.kept_units.values()) / max(sum(n for _, n in model.kept_units.values()), 1)
    print(f"{args.model}: task {args.task}, labels {model.labels}, {kept:.1%} of the masked units kept")
    if args.predict:
        x = torch.from_numpy(np.load(args.predict, allow_pickle=False)).float()
        with torch.no_grad():
            top = model(x).argmax(1).tolist()
        print("predictions:", [model.labels[i] for i in top])
    return 0


def _predict(argv: list[str]) -> int:
    p = model_parser(
        "predict",
        "Classify image files with one task of a model: each file's label and score, preprocessing included.",
        "  python -c 'from PIL import Image; from hatzoo.data import load_fashion_mnist; "
        'Image.fromarray(load_fashion_mnist().x_test[0, 0]).save("boot.png")\'\n'
        "  hatzoo predict hat-vit-small --task 4 boot.png\n"
        "  hatzoo predict hat-vit-small --task 4 --top-k 2 boot.png",
    )
    p.add_argument("--task", type=int, required=True, help="the task whose labels to answer with")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--top-k", type=int, default=1, help="how many labels to print per image")
    args = p.parse_args(argv)
    import hatzoo

    model = hatzoo.load(args.model, task=args.task, revision=args.revision)
    for image, answer in zip(args.images, model.predict(args.images, top_k=args.top_k), strict=True):
        print(f"{image}\t" + "\t".join(f"{label} {score:.4f}" for label, score in answer.top_k))
    return 0


def _export(argv: list[str]) -> int:
    p = model_parser(
        "export",
        "Export tasks to pruned ONNX graphs: a bundle with a manifest, ready for 'hatzoo serve'.",
        "  hatzoo export hat-vit-small --task 3 -o bundles/vit\n"
        "  hatzoo export runs/demo/model --all-tasks --name hat-vit-demo -o bundles/demo\n"
        "  hatzoo export runs/demo/model --task 0 --task 1 -o bundles/demo-fp16 --fp16",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--task", type=int, action="append", help="a task to export (repeatable; this or --all-tasks)"
    )
    which.add_argument("--all-tasks", action="store_true", help="every task of the model")
    p.add_argument("-o", "--out", required=True, help="bundle folder to write")
    p.add_argument("--name", help="model name in the bundle (default: the zoo name or folder name)")
    p.add_argument("--fp16", action="store_true", help="half-precision graphs for GPU serving")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument(
        "--image-size",
        type=int,
        help="input size for models without a fixed one (ResNet) (default: the trained size)",
    )
    args = p.parse_args(argv)
    import hatzoo
    from hatzoo.data_config import DataConfig
    from hatzoo.export.onnx_export import export_bundle
    from hatzoo.hub.download import snapshot_commit
    from hatzoo.loader import load_ratio_heads
    from hatzoo.zoo import resolve

    model = hatzoo.load(args.model, revision=args.revision)
    heads = load_ratio_heads(args.model, args.revision)  # a release's task-free heads go into its graphs
    target, revision = resolve(args.model, args.revision)
    commit = snapshot_commit(target) if Path(target).is_dir() else None
    out = export_bundle(
        model,
        args.out,
        model_name=args.name or Path(str(args.model)).name,
        source={"repo_id": str(target), "revision": commit or revision},
        tasks=None if args.all_tasks else args.task,
        normalization=DataConfig.from_dict(model.data_config).normalization if model.data_config else None,
        opset=args.opset,
        dtype="float16" if args.fp16 else "float32",
        image_size=args.image_size,
        ratio_heads=heads,
    )
    print(f"wrote bundle {out}")
    return 0


def _info(argv: list[str]) -> int:
    p = model_parser(
        "info",
        "Tasks, labels, test accuracy (from the zoo card) and capacity of a model.",
        "  hatzoo info hat-vit-small\n  hatzoo info runs/demo/model        # a folder (after 'hatzoo train')",
    )
    args = p.parse_args(argv)
    from hatzoo.zoo import default_zoo

    zoo = default_zoo(check_names=False)  # reading a card needs no torch
    card = zoo.get_card(args.model) if args.model in zoo else None
    results = card.results if card else None
    release = card and results.complete and results.capacity and args.revision is None
    if release and not Path(args.model).is_dir():  # a local folder of that name is what loads
        # a zoo release at its pin: the card holds everything, so nothing is loaded (and no torch)
        print(f"{args.model}: {len(results.tasks)} tasks, architecture {card.arch} (card; files not loaded)")
        for t, (name, acc) in enumerate(zip(results.tasks, results.shipped, strict=False)):
            print(f"  task {t}: {name}, test accuracy {acc:.2f}% (card)")
        _print_card_results(results)
        return 0
    import hatzoo

    final = results.shipped if results else []
    model = hatzoo.load(args.model, revision=args.revision)
    print(f"{args.model}: {model.num_tasks} tasks, architecture {model.spec.arch.get('name', 'sequential')}")
    for t, info in enumerate(model.tasks):
        acc = f", test accuracy {final[t]:.2f}% (card)" if t < len(final) else ""
        print(f"  task {t} [{info.status}]: {', '.join(info.labels)}{acc}")
    if results:
        _print_card_results(results)
    capacity = model.capacity()
    size = sum(g["size"] for g in capacity.values())
    used = size - sum(g["free"] for g in capacity.values())
    print(f"capacity: {used}/{size} units used ({used / max(size, 1):.1%}) over {len(capacity)} mask groups")
    for name, group in capacity.items():
        share = (group["size"] - group["free"]) / max(group["size"], 1)
        print(f"  {name:<28} {share:>6.1%} of {group['size']:<5} used; per task {group['used']}")
    return 0


def _print_card_results(results: CardResults) -> None:
    """The card's averages, its accuracy without a task id per rule, and the room it leaves for new tasks."""
    if results.average_accuracy is not None:
        average = results.release["average_accuracy"] if results.release else results.average_accuracy
        print(f"average accuracy {average:.2f}%, backward transfer {results.bwt:.2f}%")
    if block := results.task_agnostic:
        print(
            f"without a task id (task-incremental ceiling {block['task_incremental']:.2f}%, "
            f"joint 10-way classifier {block.get('joint_class_incremental') or float('nan'):.2f}%):"
        )
        for rule, scores in block["rules"].items():
            print(
                f"  {rule:<26} task predicted {scores['task']:.2f}%, "
                f"class-incremental accuracy {scores['class_incremental']:.2f}%"
            )
        for baseline, scores in block.get("baselines", {}).items():
            print(
                f"  {baseline:<26} (baseline) class-incremental accuracy {scores['class_incremental']:.2f}%"
            )
    if results.capacity:
        full = sum(1 for g in results.capacity.values() if g["free"] == 0)
        print(f"free units per group after the release's tasks (card; {full} groups full):")
        for name, group in results.capacity.items():
            print(f"  {name:<28} {group['free']:>5} of {group['size']:<5} free")


def _list(argv: list[str]) -> int:
    p = command_parser("list", "The zoo's models: name, pinned Hub revision, description.", "  hatzoo list")
    p.parse_args(argv)
    from hatzoo.zoo import default_zoo

    zoo = default_zoo(check_names=False)  # names only: no torch, so it answers at once
    for name in zoo.list_models():
        card = zoo.get_card(name)
        print(f"{name:<18} {card.hub.repo_id}@{card.hub.revision}  {card.description}")
    return 0


# a command is a function, or "module:function": imported only when it runs, so serve never imports torch
COMMANDS: dict[str, tuple[str | Callable[[list[str]], int], str]] = {
    "train": ("hatzoo.training.cli:train_command", "train a recipe task after task (with resume)"),
    "push": (_push, "publish a checkpoint folder (git mirror / remote, or HTTP)"),
    "load": (_load, "load a model from the Hub or a folder, optionally predict"),
    "predict": (_predict, "label image files with one task of a model"),
    "export": (_export, "export tasks to pruned ONNX graphs (a bundle)"),
    "serve": ("hatzoo.export.server:main", "serve bundles over HTTP, routing requests by model and task"),
    "info": (_info, "tasks, labels, accuracy and capacity of a model"),
    "list": (_list, "the zoo's models"),
    "demo": ("hatzoo.demo:main", "the whole life cycle on a local Hub: train, publish, load, export, serve"),
}

USAGE = (
    "usage: hatzoo [--version] COMMAND [ARGS]   (hatzoo COMMAND --help for its options and examples)\n\n"
    "commands:\n" + "".join(f"  {name:<8} {text}\n" for name, (_, text) in COMMANDS.items())
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("-V", "--version"):
        print(f"hatzoo {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    run = COMMANDS[command][0]
    try:
        return (pkgutil.resolve_name(run) if isinstance(run, str) else run)(rest) or 0
    except HATError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
