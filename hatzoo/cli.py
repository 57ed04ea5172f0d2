"""The ``hatzoo`` command: train, push, load, export, serve, info, and the end-to-end demo.

Each subcommand imports what it needs when it runs, so ``hatzoo serve`` never imports torch.
A user mistake prints one ``error:`` line that says what to do, and exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hatzoo.errors import HATError

EXIT_USAGE = 2


def _train(argv: list[str]) -> int:
    from hatzoo.training.cli import train_command

    return train_command(argv)


def _serve(argv: list[str]) -> int:
    from hatzoo.export.server import main as serve_main

    serve_main(argv)
    return 0


def _demo(argv: list[str]) -> int:
    from hatzoo.demo import main as demo_main

    return demo_main(argv)


def _push(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hatzoo push", description="Publish a checkpoint folder to the Hub.")
    p.add_argument("folder", help="a folder written by save_pretrained (e.g. runs/<name>/model)")
    p.add_argument("repo_id", help="org/name on the Hub")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--git-mirror", help="publish with git into this mirror folder (what olah serves)")
    target.add_argument(
        "--remote-url", help="publish with git to this remote (needs git-lfs for http remotes)"
    )
    p.add_argument("--revision", default="main", help="branch to publish to")
    p.add_argument("--tag", help="also tag the commit (git paths)")
    p.add_argument("--message", default="Upload HAT model with hatzoo")
    p.add_argument("--token", help="Hub token for the HTTP path (default: the logged-in one)")
    args = p.parse_args(argv)
    from hatzoo.checkpoint import load_pretrained
    from hatzoo.hub.publish import publish_git, publish_http
    from hatzoo.hub.push import GIT_MIRROR_ENV

    folder = Path(args.folder)
    load_pretrained(folder)  # refuse to publish a folder that would not load
    mirror = args.git_mirror or os.environ.get(GIT_MIRROR_ENV)
    if mirror or args.remote_url:
        sha = publish_git(
            folder,
            args.repo_id,
            mirror_root=mirror,
            remote_url=args.remote_url,
            branch=args.revision,
            message=args.message,
            tag=args.tag,
        )
    else:
        sha = publish_http(
            folder, args.repo_id, revision=args.revision, message=args.message, token=args.token
        )
    print(f"published {folder} as {args.repo_id}@{sha}")
    return 0


def _load(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hatzoo load", description="Load a model (and optionally predict).")
    p.add_argument("model", help="zoo name, Hub repo id or local folder")
    p.add_argument("--task", type=int, help="load task T's pruned model instead of the full HAT model")
    p.add_argument("--revision", help="branch, tag or commit")
    p.add_argument("--predict", help="a .npy batch [B, C, H, W] of normalized images to classify")
    args = p.parse_args(argv)
    import numpy as np
    import torch

    import hatzoo

    model = hatzoo.load(args.model, task=args.task, revision=args.revision)
    if args.task is None:
        print(f"{args.model}: full HAT model, {model.num_tasks} tasks")
        return 0
    print(
        f"{args.model}: task {args.task}, labels {model.labels}, kept units {_kept_share(model.kept_units)}"
    )
    if args.predict:
        x = torch.from_numpy(np.load(args.predict, allow_pickle=False)).float()
        with torch.no_grad():
            top = model(x).argmax(1).tolist()
        print("predictions:", [model.labels[i] for i in top])
    return 0


def _kept_share(kept: dict[str, list[int]]) -> str:
    total = sum(n for _, n in kept.values())
    return f"{sum(k for k, _ in kept.values())}/{total}"


def _export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hatzoo export", description="Export tasks to pruned ONNX graphs.")
    p.add_argument("model", help="zoo name, Hub repo id or local folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", type=int, action="append", help="a task to export (repeatable)")
    which.add_argument("--all-tasks", action="store_true", help="every task of the model")
    p.add_argument("-o", "--out", required=True, help="bundle folder to write")
    p.add_argument("--revision", help="branch, tag or commit")
    p.add_argument("--name", help="model name in the bundle (default: the zoo name or repo id)")
    p.add_argument("--fp16", action="store_true", help="half-precision graphs for GPU serving")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--image-size", type=int, help="input size for models without a fixed one (ResNet)")
    args = p.parse_args(argv)
    import hatzoo
    from hatzoo.export.onnx_export import export_bundle
    from hatzoo.hub.download import snapshot_commit
    from hatzoo.zoo import resolve

    model = hatzoo.load(args.model, revision=args.revision)
    target, revision = resolve(args.model, args.revision)
    commit = snapshot_commit(target) if Path(target).is_dir() else None
    name = args.name or Path(str(args.model)).name
    out = export_bundle(
        model,
        args.out,
        model_name=name,
        source={"repo_id": str(target), "revision": commit or revision},
        tasks=None if args.all_tasks else args.task,
        normalization=_normalization(model.data_config),
        opset=args.opset,
        dtype="float16" if args.fp16 else "float32",
        image_size=args.image_size,
    )
    print(f"wrote bundle {out}")
    return 0


def _normalization(data_config: dict) -> dict | None:
    if "mean" in data_config and "std" in data_config:
        return {"mean": list(data_config["mean"]), "std": list(data_config["std"])}
    return None


def _info(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hatzoo info", description="Tasks, labels, accuracy and capacity.")
    p.add_argument("model", help="zoo name, Hub repo id or local folder")
    p.add_argument("--revision")
    args = p.parse_args(argv)
    import hatzoo
    from hatzoo.zoo import default_zoo

    zoo = default_zoo()
    results = zoo.get_card(args.model).results if args.model in zoo else None
    final = results.final if results else []
    model = hatzoo.load(args.model, revision=args.revision)
    print(f"{args.model}: {model.num_tasks} tasks, architecture {model.spec.arch.get('name', 'sequential')}")
    for t, info in enumerate(model.tasks):
        acc = f", test accuracy {final[t]:.2f}% (card)" if t < len(final) and final[t] is not None else ""
        print(f"  task {t} [{info.status}]: {', '.join(info.labels)}{acc}")
    if results and results.average_accuracy is not None:
        print(f"average accuracy {results.average_accuracy}%, backward transfer {results.bwt}")
    capacity = model.capacity()
    size = sum(g["size"] for g in capacity.values())
    free = sum(g["free"] for g in capacity.values())
    print(f"capacity: {size - free}/{size} units used, {free} free, over {len(capacity)} mask groups")
    for name, group in capacity.items():
        used = group["size"] - group["free"]
        print(f"  {name:<28} used {used:>5}/{group['size']:<5} per task {group['used']}")
    return 0


def _list(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="hatzoo list", description="The zoo's models.").parse_args(argv)
    from hatzoo.zoo import default_zoo

    zoo = default_zoo()
    for name in zoo.list_models():
        card = zoo.get_card(name)
        print(f"{name:<18} {card.hub.repo_id}@{card.hub.revision}  {card.description}")
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (_train, "train a recipe task after task (with resume)"),
    "push": (_push, "publish a checkpoint folder (git mirror / remote, or HTTP)"),
    "load": (_load, "load a model from the Hub or a folder, optionally predict"),
    "export": (_export, "export tasks to pruned ONNX graphs (a bundle)"),
    "serve": (_serve, "serve bundles over HTTP, routing requests by model and task"),
    "info": (_info, "tasks, labels, accuracy and capacity of a model"),
    "list": (_list, "the zoo's models"),
    "demo": (_demo, "the whole life cycle on a local Hub: train, publish, load, export, serve"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: hatzoo COMMAND [ARGS]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<8} {help_text}")
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[command][0](rest)
    except HATError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
