"""Answering without a task id by likelihood ratio: the replay buffer (balance, capacity, files without
pickle), each task's head against a plain-torch reference, task-given answers untouched, and the served
route against the library call on the same inputs."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hatzoo
from hatzoo.errors import CheckpointError, InputError
from hatzoo.likelihood_ratio import RATIO_FILE, RatioConfig, RatioHeads, fit_likelihood_ratio
from hatzoo.replay import REPLAY_FILE, ReplayBuffer
from hatzoo.task_inference import TaskAgnosticModel, evaluate, predict
from tests.model_support import mlp, tiny_recipe, train_random_tasks, vit
from tests.serving_support import post, running_server

SHAPE = (1, 16, 16)
CLASSES = (2, 3, 2)


def task_data(task: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of task ``task``: noise around a brightness and a stripe of the task's own."""
    gen = torch.Generator().manual_seed(seed * 31 + task)
    x = torch.randn(n, *SHAPE, generator=gen) * 0.5 + (task - 1.0)
    x[:, :, 4 * task : 4 * task + 4] += 1.5
    return x, torch.randint(0, CLASSES[task], (n,), generator=gen)


@pytest.fixture(scope="module")
def hat() -> hatzoo.HATModel:
    torch.manual_seed(0)
    return train_random_tasks(vit(), CLASSES, SHAPE, steps=4, batch=16, lr=1e-2)


@pytest.fixture(scope="module")
def buffer() -> ReplayBuffer:
    buffer = ReplayBuffer(60, seed=3)
    for t in range(len(CLASSES)):
        buffer.add(t, *task_data(t, 80, seed=1))
    return buffer


@pytest.fixture(scope="module")
def heads(hat, buffer) -> RatioHeads:
    agnostic = TaskAgnosticModel.from_hat_model(hat)
    training = {t: task_data(t, 120, seed=2) for t in range(len(CLASSES))}
    return fit_likelihood_ratio(agnostic, buffer, training, RatioConfig(hidden=16, steps=150, batch_size=64))


def test_buffer_is_class_balanced_within_its_capacity() -> None:
    buffer = ReplayBuffer(10, seed=0)
    buffer.add(0, torch.arange(10.0)[:, None], torch.tensor([0] * 7 + [1] * 3))
    assert buffer.counts() == {(0, 0): 5, (0, 1): 3}  # a class with fewer images keeps them all
    before = buffer.x[:5].clone()
    buffer.add(1, torch.arange(100.0, 130.0)[:, None], torch.arange(30) % 3)
    assert buffer.counts() == {(0, 0): 2, (0, 1): 2, (1, 0): 2, (1, 1): 2, (1, 2): 2}
    assert torch.equal(buffer.x[:2], before[:2])  # shrinking keeps a subset, in the stored order
    buffer.add(2, torch.arange(200.0, 220.0)[:, None], torch.arange(20) % 2)
    counts = list(buffer.counts().values())
    assert len(buffer) == sum(counts) == 10 and max(counts) - min(counts) <= 1
    assert buffer.tasks == [0, 1, 2]
    assert torch.equal(buffer.task, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2]))
    assert buffer.x[buffer.task == 1].min() >= 100 and buffer.x[buffer.task == 2].min() >= 200
    assert set(buffer.others(1).flatten().tolist()).isdisjoint(buffer.x[buffer.task == 1].flatten().tolist())


def test_buffer_is_a_function_of_its_seed_and_data() -> None:
    def filled(seed: int) -> torch.Tensor:
        buffer = ReplayBuffer(8, seed=seed)
        for t in range(2):
            buffer.add(t, *task_data(t, 50, seed=0))
        return buffer.x

    assert torch.equal(filled(1), filled(1))
    assert not torch.equal(filled(1), filled(2))


def test_buffer_round_trips_bitwise_without_pickle(buffer, tmp_path: Path, monkeypatch) -> None:
    path = buffer.save(tmp_path / REPLAY_FILE)

    def refuse(*args, **kwargs):
        raise AssertionError("loading unpickled")

    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = ReplayBuffer.load(path)
    assert (loaded.capacity, loaded.seed, loaded.counts()) == (buffer.capacity, buffer.seed, buffer.counts())
    for name in ("x", "task", "y"):
        assert torch.equal(getattr(loaded, name), getattr(buffer, name))
    assert loaded.save(tmp_path / "again.safetensors").read_bytes() == path.read_bytes()
    loaded.add(3, *task_data(0, 40, seed=5))  # training continues with the loaded buffer
    assert len(loaded) <= loaded.capacity and loaded.tasks == [0, 1, 2, 3]


def test_buffer_refuses_what_it_cannot_keep(buffer, tmp_path: Path) -> None:
    for capacity in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="capacity"):
            ReplayBuffer(capacity)
    with pytest.raises(InputError, match="already in the buffer"):
        buffer.add(0, *task_data(0, 4, seed=0))
    with pytest.raises(InputError, match="shape"):
        buffer.add(7, torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="one label per image"):
        ReplayBuffer(4).add(0, torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="replay buffer"):
        ReplayBuffer.load(bad)


def _reference_scores(agnostic: TaskAgnosticModel, heads: RatioHeads, x: torch.Tensor) -> torch.Tensor:
    """Each task's head by hand: the blocks' mean patch tokens (forward hooks of plain torch) and the
    final features, standardized, through the MLP's weights read from its state dict."""
    columns = []
    for net in agnostic.task_models:
        taps: list[torch.Tensor] = []
        hooks = [
            block.register_forward_hook(lambda m, i, out, taps=taps: taps.append(out[:, 1:].mean(1)))
            for block in net.backbone.blocks
        ]
        with torch.no_grad():
            final = net.forward_features(x)
        for h in hooks:
            h.remove()
        f = torch.cat([*taps, final], 1).double()
        w = {k: v.double() for k, v in heads.head(net.task).state_dict().items()}
        hidden = torch.relu(((f - w["mean"]) / w["scale"]) @ w["net.0.weight"].T + w["net.0.bias"])
        columns.append((hidden @ w["net.2.weight"].T + w["net.2.bias"])[:, 0])
    return torch.stack(columns, 1)


def test_scores_match_a_plain_torch_reference(hat, heads) -> None:
    agnostic = TaskAgnosticModel.from_hat_model(hat, heads)
    x = torch.cat([task_data(t, 10, seed=9)[0] for t in range(len(CLASSES))])
    p = agnostic.predict(x)  # the heads make likelihood_ratio the default rule
    want = _reference_scores(agnostic, heads, x)
    torch.testing.assert_close(p.scores, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(p.task, want.argmax(1))
    assert torch.equal(p.scores, predict(agnostic, x, rule="likelihood_ratio", heads=heads).scores)


def test_heads_learn_which_task_an_input_is_from(hat, heads) -> None:
    agnostic = TaskAgnosticModel.from_hat_model(hat, heads)
    pairs = [task_data(t, 60, seed=11) for t in range(len(CLASSES))]
    x = torch.cat([p[0] for p in pairs])
    task = torch.cat([torch.full((60,), t) for t in range(len(CLASSES))])
    found = evaluate(agnostic, x, task, torch.cat([p[1] for p in pairs]))
    assert found["likelihood_ratio"].task >= 0.9 > found["energy"].task


def test_fitting_heads_leaves_task_given_answers_bitwise(hat, buffer) -> None:
    x = torch.cat([task_data(t, 8, seed=4)[0] for t in range(len(CLASSES))])
    with torch.no_grad():
        before = [hat(x, task=t) for t in range(len(CLASSES))]
        state = {k: v.clone() for k, v in hat.state_dict().items()}
        agnostic = TaskAgnosticModel.from_hat_model(hat)
        given = [m(x) for m in agnostic.task_models]
    training = {t: task_data(t, 40, seed=6) for t in range(len(CLASSES))}
    heads = fit_likelihood_ratio(agnostic, buffer, training, RatioConfig(hidden=8, steps=20, batch_size=32))
    with torch.no_grad():
        assert all(torch.equal(a, hat(x, task=t)) for t, a in enumerate(before))
        assert all(torch.equal(a, m(x)) for a, m in zip(given, agnostic.task_models, strict=True))
    assert all(torch.equal(v, hat.state_dict()[k]) for k, v in state.items())
    assert heads.tasks == [0, 1, 2]


def test_heads_refuse_what_they_cannot_answer(hat, buffer) -> None:
    agnostic = TaskAgnosticModel.from_hat_model(hat)
    with pytest.raises(InputError, match="no images of tasks"):
        fit_likelihood_ratio(agnostic, ReplayBuffer(10), {t: task_data(t, 8, 0) for t in range(3)})
    one = ReplayBuffer(1)
    for t in range(len(CLASSES)):
        one.add(t, *task_data(t, 8, seed=0))
    with pytest.raises(InputError, match="no image of a task other than 0"):
        fit_likelihood_ratio(agnostic, one, {t: task_data(t, 8, 0) for t in range(3)})
    with pytest.raises(InputError, match="needs each task's head"):
        predict(agnostic, torch.zeros(2, *SHAPE), rule="likelihood_ratio")
    with pytest.raises(InputError, match="layers"):
        RatioConfig(layers="middle")


def test_release_folder_with_heads_answers_by_them(hat, heads, tmp_path: Path) -> None:
    folder = tmp_path / "release"
    hat.save_pretrained(folder)
    heads.save(folder / RATIO_FILE)
    loaded = hatzoo.load(folder, task="auto")
    x = torch.cat([task_data(t, 6, seed=12)[0] for t in range(len(CLASSES))])
    want = TaskAgnosticModel.from_hat_model(hat, heads).predict(x)
    got = loaded.predict(x)
    assert torch.equal(got.scores, want.scores) and got.label == want.label
    again = RatioHeads.load(folder / RATIO_FILE)
    assert all(torch.equal(v, heads.state_dict()[k]) for k, v in again.state_dict().items())


def test_served_route_answers_what_the_library_answers(hat, heads, tmp_path: Path) -> None:
    """A release folder with heads, exported by ``hatzoo export``; the bare-model routes (v1 and v2) against
    ``load(folder, task="auto").predict`` on the same inputs."""
    import tritonclient.http as tc

    folder = tmp_path / "release"
    hat.save_pretrained(folder)
    heads.save(folder / RATIO_FILE)
    library = hatzoo.load(folder, task="auto")
    root = tmp_path / "bundle"
    export = [sys.executable, "-m", "hatzoo.cli", "export", str(folder), "--all-tasks", "--name", "vit"]
    done = subprocess.run([*export, "-o", str(root)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((root / "manifest.json").read_text())
    assert {e["score_name"] for e in manifest["tasks"].values()} == {"task_score"}
    x = torch.cat([task_data(t, 5, seed=13)[0] for t in range(len(CLASSES))])
    want = library.predict(x)
    with running_server([root]) as (url, _app):
        status, got = post(f"{url}/v1/models/vit:predict", json.dumps({"inputs": x.tolist()}).encode())
        assert status == 200, got
        assert got["rule"] == "likelihood_ratio"
        assert got["task"] == [str(t) for t in want.task.tolist()] and got["label"] == want.label
        np.testing.assert_allclose(np.asarray(got["scores"]), want.scores.numpy(), rtol=0, atol=1e-4)
        status, energy = post(
            f"{url}/v1/models/vit:predict?rule=energy", json.dumps({"inputs": x.tolist()}).encode()
        )
        assert status == 200 and energy["rule"] == "energy"
        client = tc.InferenceServerClient(url.removeprefix("http://"))
        inp = tc.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x.numpy())
        res = client.infer("vit", [inp])
        assert [v.decode() for v in res.as_numpy("label")] == want.label
        assert res.get_response()["parameters"] == {"rule": "likelihood_ratio"}


def test_a_run_with_replay_publishes_its_buffer_and_heads(tmp_path: Path) -> None:
    """``recipe.replay`` fills the buffer as tasks end and fits the heads at the end; a run stopped after
    its first task and resumed writes the same files as one that ran through."""
    from hatzoo.training import train_sequence

    recipe = tiny_recipe(epochs=1, replay=30)
    assert recipe.to_dict()["recipe"]["replay"] == 30 and "replay" not in tiny_recipe().to_dict()["recipe"]
    whole = tmp_path / "whole"
    train_sequence(recipe, whole, progress=False, model_factory=mlp)
    staged = tmp_path / "staged"
    train_sequence(recipe, staged, progress=False, model_factory=mlp, stop_after=0)
    train_sequence(recipe, staged, progress=False, model_factory=mlp)
    for name in (REPLAY_FILE, RATIO_FILE):
        assert (whole / "model" / name).read_bytes() == (staged / "model" / name).read_bytes()
    buffer = ReplayBuffer.load(whole / "model" / REPLAY_FILE)
    assert len(buffer) == 30 and buffer.tasks == [0, 1, 2] and set(buffer.counts().values()) == {5}
    agnostic = hatzoo.load(whole / "model", task="auto")
    assert agnostic.default_rule == "likelihood_ratio" and agnostic.ratio_heads.tasks == [0, 1, 2]
