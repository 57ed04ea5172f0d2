"""A new user's first hour with the zoo, as they would spend it: timm's hf-hub: download first and then
hatzoo.load offline, releases checked file by file, loads that repeat bitwise, timm's create_model idiom,
predict on image files, `hatzoo predict`, and the cards' "How to load" code run as written.

The shipped hat-vit-tiny release (3.8 MB) stands in wherever any release would do.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hatzoo
from hatzoo.card import Card
from hatzoo.data import load_fashion_mnist
from hatzoo.hub.release import build_mirror, check_release, release_files, release_folder, release_revision
from hatzoo.images import UnnormalizedInputWarning, create_transform, resolve_data_config, to_batch
from hatzoo.zoo import default_zoo
from tests.model_support import fresh_env, train_tasks, vit

NAME = "hat-vit-tiny"
REPO = "hatzoo/hat-vit-tiny"
ZOO = Path(__file__).resolve().parents[1] / "zoo"
TIMM_DOWNLOAD = 'import sys, timm; timm.create_model("hf-hub:" + sys.argv[1], pretrained=True)'
LOAD_TASK_3 = textwrap.dedent(
    """
    import sys, torch, hatzoo
    torch.set_num_threads(1)
    net = hatzoo.load(sys.argv[1], task=3)
    with torch.no_grad():
        print(json.dumps(net(torch.linspace(-1, 2, 784).view(1, 1, 28, 28)).tolist()))
    """
).replace("import sys", "import json, sys")


def run(
    code: str, env: dict[str, str], *args: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def snapshot_files(cache: Path) -> list[str]:
    snapshots = list(cache.glob(f"models--{REPO.replace('/', '--')}/snapshots/*"))
    assert len(snapshots) == 1, snapshots
    return sorted(p.name for p in snapshots[0].iterdir())


@pytest.fixture(autouse=True)
def new_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline, an empty Hugging Face cache, the checkout's zoo/ and cards."""
    for var in ("HF_ENDPOINT", "HATZOO_ZOO", "HATZOO_CARDS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new-user-cache"))


@pytest.fixture(scope="module")
def card() -> Card:
    return default_zoo().get_card(NAME)


@pytest.fixture(scope="module")
def task3_reference() -> list[list[float]]:
    net = hatzoo.load(ZOO / NAME, task=3)
    with torch.no_grad():
        return net(torch.linspace(-1, 2, 784).view(1, 1, 28, 28)).tolist()


# --------------------------------------------------------------------------- every road, the whole release
def test_every_shipped_card_lists_its_release_files_and_pins_their_commit():
    for name in default_zoo().list_models():
        card, folder = default_zoo().get_card(name), ZOO / name
        assert card.files == release_files(folder), name
        assert release_revision(folder) == card.hub.revision, name
        assert card.files["model.safetensors"] == card.hub.sha256
        assert check_release(folder, card, "") == []


@pytest.mark.integration
def test_timm_hf_hub_download_first_then_hatzoo_load_offline_completes_the_cache(
    local_hub, tmp_path, task3_reference, card
):
    zoo = tmp_path / "one-release"
    shutil.copytree(ZOO / NAME, zoo / NAME)
    build_mirror(zoo, local_hub.mirror_root)
    cache = tmp_path / "hf-cache"
    online = fresh_env(tmp_path, HF_ENDPOINT=local_hub.endpoint, HF_HUB_CACHE=str(cache))
    done = run(TIMM_DOWNLOAD, online, REPO)
    assert done.returncode == 0, done.stderr
    assert snapshot_files(cache) == ["config.json", "model.safetensors"]  # timm takes what it needs

    offline = fresh_env(tmp_path, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))  # no Hub; the checkout's zoo/
    done = run(LOAD_TASK_3, offline, NAME, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == task3_reference
    assert snapshot_files(cache) == sorted(card.files)  # completed from the bundled release

    (tmp_path / "no-zoo").mkdir()
    cache_only = dict(offline, HATZOO_ZOO=str(tmp_path / "no-zoo"))
    done = run(LOAD_TASK_3, cache_only, NAME, cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # the cache alone now holds the whole release
    assert json.loads(done.stdout) == task3_reference


@pytest.mark.integration
def test_a_partial_cache_is_completed_from_the_named_hub(
    hub_env, tmp_path, monkeypatch, card, task3_reference
):
    zoo = tmp_path / "one-release"
    shutil.copytree(ZOO / NAME, zoo / NAME)
    build_mirror(zoo, hub_env.hub.mirror_root)
    from huggingface_hub import hf_hub_download

    hf_hub_download(REPO, "config.json", revision=card.hub.revision, cache_dir=str(hub_env.cache_dir))
    (tmp_path / "no-zoo").mkdir()
    monkeypatch.setenv("HATZOO_ZOO", str(tmp_path / "no-zoo"))
    net = hatzoo.load(NAME, task=3)
    with torch.no_grad():
        assert net(torch.linspace(-1, 2, 784).view(1, 1, 28, 28)).tolist() == task3_reference
    assert snapshot_files(hub_env.cache_dir) == sorted(card.files)


def tamper(path: Path) -> None:
    """Change a file so that it is still well formed: labels swapped in a config, one bit elsewhere."""
    if path.name == "config.json":
        config = json.loads(path.read_text())
        config["hatzoo"]["tasks"][3]["labels"].reverse()
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def test_each_file_of_a_release_is_covered_by_the_pin_and_named_when_changed(tmp_path, monkeypatch, card):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert sorted(card.files) == [
        "README.md",
        "accuracy.png",
        "capacity.png",
        "config.json",
        "model.safetensors",
        "replay.safetensors",
        "task_free.safetensors",
        "tasks.safetensors",
    ]
    for file in card.files:
        zoo = tmp_path / file / "zoo"
        shutil.copytree(ZOO / NAME, zoo / NAME)
        tamper(zoo / NAME / file)
        monkeypatch.setenv("HATZOO_ZOO", str(zoo))
        with pytest.raises(
            hatzoo.CheckpointError, match=rf"pins [0-9a-f]{{16}}\.\.\. for {re.escape(file)}:"
        ):
            hatzoo.load(NAME, task=3)


def test_a_changed_file_in_the_cache_is_refused_by_name(tmp_path, monkeypatch, card):
    cache = tmp_path / "hf-cache"
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / card.hub.revision
    snapshot.mkdir(parents=True)
    for file in card.files:
        shutil.copyfile(ZOO / NAME / file, snapshot / file)
    tamper(snapshot / "config.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(hatzoo.CheckpointError, match="for config.json: the cached file is corrupted"):
        hatzoo.load(NAME, task=3)


# ------------------------------------------------------------------------- a load is a function of its files
def test_two_loads_are_bitwise_equal_and_save_after_load_gives_the_same_bytes(tmp_path):
    first, second = hatzoo.load(NAME), hatzoo.load(NAME)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    for t in range(first.num_tasks):  # the ended tasks' embeddings binarize back to their masks
        for g in first.groups:
            assert torch.equal(first.embedding(g, t) > 0, first.masks(g)[t])
    release = release_folder(NAME)
    card_text = (release / "README.md").read_text()
    saved = first.save_pretrained(tmp_path / "again", precision="bf16", card=card_text)
    for file in ("model.safetensors", "tasks.safetensors", "config.json", "README.md"):
        assert (saved / file).read_bytes() == (release / file).read_bytes(), file


def test_a_forgotten_task_loads_the_same_each_time_and_allocates_nothing_for_its_class_count(tmp_path):
    model = train_tasks(vit(), 3, torch.randn(8, 1, 16, 16), seed=3)
    model.forget(1)
    folder = model.save_pretrained(tmp_path / "forgot")
    a, b = (
        hatzoo.HATModel.from_pretrained(folder).state_dict(),
        hatzoo.HATModel.from_pretrained(folder).state_dict(),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)

    config = json.loads((folder / "config.json").read_text())
    config["hatzoo"]["tasks"][1].update(num_classes=1_000_000, labels=["x"] * 1_000_000)
    (folder / "config.json").write_text(json.dumps(config))
    loaded = hatzoo.HATModel.from_pretrained(folder)  # a head of 192 x 1,000,000 floats would be 768 MB
    assert loaded.tasks[1].num_classes == 1_000_000 and loaded.heads[1].weight.numel() <= 192
    with torch.no_grad():
        x = torch.randn(2, 1, 16, 16)
        assert torch.equal(loaded(x, task=2), model(x, task=2))
    resaved = loaded.save_pretrained(tmp_path / "resaved")
    assert json.loads((resaved / "config.json").read_text()) == config


def test_a_data_config_size_the_architecture_cannot_take_is_refused_before_predict_allocates(tmp_path):
    folder = train_tasks(vit(), 1, torch.randn(4, 1, 16, 16)).save_pretrained(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["hatzoo"]["data_config"] = {"input_size": [1, 16, 16], "mean": [0.5], "std": [0.25]}
    (folder / "config.json").write_text(json.dumps(config))
    assert hatzoo.HATModel.from_pretrained(folder).data_config["input_size"] == [1, 16, 16]
    config["hatzoo"]["data_config"]["input_size"] = [1, 60000, 60000]  # 14 GB per image once resized
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(hatzoo.CheckpointError, match=r"input size \[1, 60000, 60000\].*\(1, 16, 16\)"):
        hatzoo.HATModel.from_pretrained(folder)


# ---------------------------------------------------------------------------------------- timm and HF idioms
def test_create_model_pretrained_is_the_release():
    released = hatzoo.create_model(NAME, pretrained=True)
    loaded = hatzoo.load(NAME)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        for t in range(loaded.num_tasks):
            assert torch.equal(released(x, task=t), loaded(x, task=t))
    assert hatzoo.create_model(NAME, pretrained=True, img_size=28, patch_size=7).num_tasks == 5
    with pytest.raises(hatzoo.InputError, match="released with img_size=28.*without pretrained=True"):
        hatzoo.create_model(NAME, pretrained=True, img_size=32)
    assert hatzoo.create_model(NAME, img_size=16, patch_size=4, in_chans=1).num_tasks == 0  # fresh, as before
    import timm

    with pytest.raises(hatzoo.InputError, match=r"hatzoo.create_model\('hat-vit-tiny', pretrained=True\)"):
        timm.create_model("hat_vit_tiny_patch16_224", pretrained=True)


@pytest.fixture(scope="module")
def fashion_task3(tmp_path_factory) -> tuple[list[Path], list[str], np.ndarray]:
    """The first 40 Fashion-MNIST test images of task 3 (Shirt, Sneaker): PNG files, labels, pixels."""
    raw = load_fashion_mnist()
    rows = np.flatnonzero(np.isin(raw.y_test, [6, 7]))[:40]
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i in rows:
        paths.append(folder / f"test-{i}.png")
        Image.fromarray(raw.x_test[i, 0]).save(paths[-1])
    return paths, [raw.labels[raw.y_test[i]] for i in rows], raw.x_test[rows, 0]


def test_predict_on_pngs_of_the_test_set_gives_their_labels(fashion_task3):
    paths, labels, pixels = fashion_task3
    net = hatzoo.load("hat-vit-small", task=3)
    answers = net.predict(paths, top_k=2)
    assert [a.label for a in answers][:1] == labels[:1]
    assert sum(a.label == y for a, y in zip(answers, labels, strict=True)) >= 38  # the card: 99.15%
    config = resolve_data_config(net)
    by_hand = torch.from_numpy(pixels).float().div(255).sub(config.mean[0]).div(config.std[0]).unsqueeze(1)
    with torch.no_grad():
        probabilities = net(by_hand).softmax(-1)
    for answer, row in zip(answers, probabilities, strict=True):
        assert answer.index == int(row.argmax()) and answer.label == net.labels[answer.index]
        assert answer.score == pytest.approx(float(row.max()), abs=1e-6)
        assert [label for label, _ in answer.top_k] == [net.labels[i] for i in row.argsort(descending=True)]
    same = [
        net.predict([Image.open(p) for p in paths]),  # PIL images
        net.predict(pixels),  # a uint8 batch [B, H, W]
        net.predict(list(pixels[:, :, :, None])),  # HWC arrays
        net.predict(torch.from_numpy(pixels[:, None])),  # a uint8 tensor batch [B, 1, H, W]
        net.predict(by_hand),  # already normalized
    ]
    for other in same:
        assert [(a.label, a.index) for a in other] == [(a.label, a.index) for a in answers]
    rgb = np.repeat(pixels[0][:, :, None], 3, axis=2)  # an RGB image is converted to the model's one channel
    assert net.predict(rgb)[0].label == answers[0].label
    assert net.predict(pixels[0][None])[0].label == answers[0].label  # CHW


def test_the_preprocessing_is_available_alone_and_matches_timms(fashion_task3):
    paths, _, pixels = fashion_task3
    net = hatzoo.load(NAME, task=0)
    transform = create_transform(resolve_data_config(net))
    import timm.data

    timm_config = timm.data.resolve_data_config({}, model=net)
    ours = resolve_data_config(net)
    assert tuple(timm_config["input_size"]) == ours.input_size == (1, 28, 28)
    assert (tuple(timm_config["mean"]), tuple(timm_config["std"])) == (ours.mean, ours.std)
    assert torch.equal(transform(paths[0]), to_batch(paths[:1], net.data_config)[0])
    big = Image.fromarray(pixels[0]).resize((56, 56), Image.Resampling.NEAREST)  # resized back to 28 x 28
    assert transform(big).shape == (1, 28, 28)
    with pytest.raises(hatzoo.InputError, match="uint8 pixels"):
        net.predict(pixels.astype(np.float64))
    with pytest.raises(hatzoo.InputError, match="cannot read the image file"):
        net.predict(["no-such-file.png"])
    fresh = hatzoo.create_model(NAME, img_size=16, patch_size=4, in_chans=1, depth=1)
    fresh.add_task(2)
    fresh.end_task(0)
    with pytest.raises(hatzoo.InputError, match="has no data config"):
        fresh.specialize(0).predict(pixels[:1])


def test_the_task_free_model_predicts_images_too(fashion_task3):
    paths, _, pixels = fashion_task3
    auto = hatzoo.load(NAME, task="auto")
    from_files = auto.predict(paths[:5])
    from_tensor = auto.predict(to_batch(pixels[:5], auto.task_model(0).data_config))
    assert from_files.label == from_tensor.label and torch.equal(from_files.task, from_tensor.task)


def test_raw_pixels_given_to_a_task_model_warn_once():
    net = hatzoo.load(NAME, task=1)
    pixels = torch.randint(0, 256, (2, 1, 28, 28)).float()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            net(pixels)
            net(pixels)
            hatzoo.load(NAME, task=1)(to_batch(pixels.byte(), net.data_config))  # normalized: no warning
    assert [w.category for w in caught] == [UnnormalizedInputWarning]
    assert "like raw 0-255 pixels" in str(caught[0].message)


@pytest.mark.integration
def test_hatzoo_predict_prints_each_files_labels(fashion_task3, tmp_path):
    paths, labels, _ = fashion_task3
    env = fresh_env(tmp_path, HF_HUB_OFFLINE="1")
    cli = Path(sys.executable).with_name("hatzoo")
    done = subprocess.run(
        [cli, "predict", "hat-vit-small", "--task", "3", "--top-k", "2", *map(str, paths[:3])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == list(map(str, paths[:3]))
    assert [line.split("\t")[1].rsplit(" ", 1)[0] for line in lines] == labels[:3]
    assert all(len(line.split("\t")) == 3 for line in lines)
    missing = subprocess.run(
        [cli, "predict", "hat-vit-small", "--task", "3", "nope.png"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "error: cannot read the image file 'nope.png'" in missing.stderr


# --------------------------------------------------------------------------------------------- cards that run
def how_to_load(readme: str) -> str:
    """The python code of a card's "How to load" section."""
    section = readme.split("## How to load", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the card's How to load section has no python code"
    return "\n".join(blocks)


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(p.name for p in ZOO.iterdir() if (p / "README.md").is_file()))
def test_each_cards_how_to_load_code_runs_as_written(name, tmp_path):
    code = how_to_load((ZOO / name / "README.md").read_text())
    check = "\nprint(type(model).__name__, type(full).__name__, full.num_tasks)\n"
    env = fresh_env(tmp_path, HF_HUB_OFFLINE="1")  # a new user: empty cache, no Hub, run outside the checkout
    done = run(code + check, env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    tasks = len(default_zoo().get_card(name).results.final)
    assert done.stdout.split() == ["TaskModel", "HATModel", str(tasks)]


@pytest.mark.integration
def test_hatzoo_predicts_help_examples_run_as_written(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = fresh_env(tmp_path, HF_HUB_OFFLINE="1", PATH=f"{bin_dir}:/usr/bin:/bin")
    help_text = subprocess.run(
        [bin_dir / "hatzoo", "predict", "--help"], env=env, capture_output=True, text=True, check=True
    ).stdout
    examples = [line.strip() for line in help_text.split("examples:\n", 1)[1].splitlines() if line.strip()]
    assert len(examples) == 3
    outputs = []
    for example in examples:
        done = subprocess.run(example, shell=True, env=env, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, (example, done.stderr)
        outputs.append(done.stdout)
    raw = load_fashion_mnist()
    answer = hatzoo.load("hat-vit-small", task=4).predict(tmp_path / "boot.png", top_k=2)[0]
    assert answer.label == raw.labels[raw.y_test[0]]  # the file the first example wrote: test image 0
    printed = [f"{label} {score:.4f}" for label, score in answer.top_k]
    assert outputs[1:] == [f"boot.png\t{printed[0]}\n", f"boot.png\t{printed[0]}\t{printed[1]}\n"]
