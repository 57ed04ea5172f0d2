"""Export tests: pruned per-task ONNX graphs vs the HAT model, on the real exporter and ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import hatzoo
from hatzoo.core.specialize import ConstantBranch, specialize
from hatzoo.errors import ExportError, InputError, TaskError
from hatzoo.export.bundle import read_bundle
from hatzoo.export.onnx_export import (
    INPUT_NAME,
    ExportReport,
    check_graph,
    export_bundle,
    export_module,
    export_task,
    ort_session,
)
from hatzoo.export.server import create_app
from tests.model_support import train_random_tasks
from tests.serving_support import npy

ATOL = 1e-4
BATCHES = (1, 7, 32)


@dataclass
class Trained:
    """A small HAT model with ended tasks and its per-sample input shape."""

    model: hatzoo.HATModel
    shape: tuple[int, ...]
    tasks: list[int]


def _train(model: hatzoo.HATModel, shape: tuple[int, ...], tasks: int = 3, steps: int = 3) -> Trained:
    """Train ``tasks`` tasks of 2, 3, ... classes for a few steps each (partial masks), then end them."""
    torch.manual_seed(0)
    train_random_tasks(model, tuple(range(2, 2 + tasks)), shape, steps=steps, batch=8, lr=1e-3)
    return Trained(model, shape, list(range(tasks)))


@pytest.fixture(scope="module")
def vit() -> Trained:
    m = hatzoo.create_model("hat-vit-tiny", img_size=16, patch_size=4, in_chans=1, depth=2)
    return _train(m, (1, 16, 16))


@pytest.fixture(scope="module")
def resnet() -> Trained:
    return _train(hatzoo.create_model("hat-resnet18", in_chans=1), (1, 32, 32), tasks=2, steps=2)


@pytest.fixture(scope="module")
def mlp() -> Trained:
    torch.manual_seed(1)
    seq = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10)
    )
    return _train(hatzoo.hatify(seq), (1, 8, 8))


@pytest.fixture(scope="module")
def exported(vit, resnet, mlp, tmp_path_factory) -> dict[str, tuple[Trained, list[ExportReport]]]:
    """Every task of the three models exported once (float32), verified inside export_task."""
    out = tmp_path_factory.mktemp("graphs")
    result = {}
    for name, trained in (("vit", vit), ("resnet", resnet), ("mlp", mlp)):
        kwargs = {"resnet": {"image_size": 32}, "mlp": {"input_shape": (1, 8, 8)}}.get(name, {})
        reports = [export_task(trained.model, t, out / f"{name}-{t}.onnx", **kwargs) for t in trained.tasks]
        result[name] = (trained, reports)
    return result


def _hat(model: hatzoo.HATModel, task: int, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x), task=task).numpy()


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort_session(path).run(None, {INPUT_NAME: x})[0]


@pytest.mark.parametrize("name", ["vit", "resnet", "mlp"])
def test_every_task_matches_the_hat_model(exported, name: str) -> None:
    trained, reports = exported[name]
    for report in reports:
        assert report.max_abs_diff is not None and report.max_abs_diff <= ATOL
        assert report.tolerance == ATOL
        assert set(BATCHES) <= set(report.checked_batches)
        assert report.opset == 18 and report.dtype == "float32"
        assert report.labels == trained.model.tasks[report.task].labels
        onnx.checker.check_model(str(report.path), full_check=True)
        opset = {o.domain: o.version for o in onnx.load(str(report.path)).opset_import}
        assert opset[""] == 18
    # training left the masks partial: some units kept, some removed
    kept = [v for r in reports for v in r.kept_units.values()]
    assert any(0 < k < total for k, total in kept)
    assert 0 < min(r.flops_fraction for r in reports) < 1


@pytest.mark.parametrize("name", ["vit", "resnet", "mlp"])
def test_dynamic_batch_runs_in_onnx_runtime(exported, name: str) -> None:
    trained, reports = exported[name]
    graph_input = onnx.load(str(reports[0].path)).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    rng = np.random.default_rng(0)
    for report in reports:
        for b in BATCHES:
            x = rng.standard_normal((b, *trained.shape)).astype(np.float32)
            y = _run(report.path, x)
            assert y.shape == (b, len(report.labels))
            np.testing.assert_allclose(y, _hat(trained.model, report.task, x), rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_pruned_graph_is_smaller_than_the_dense_masked_graph(exported, name: str, tmp_path: Path) -> None:
    trained, reports = exported[name]
    report = reports[0]
    dense = specialize(trained.model, report.task, prune=False)
    path = export_module(dense, torch.randn(2, *trained.shape), tmp_path / "dense.onnx")
    dense_params = check_graph(path)
    assert report.num_parameters < dense_params
    x = np.random.default_rng(1).standard_normal((3, *trained.shape)).astype(np.float32)
    np.testing.assert_allclose(_run(path, x), _hat(trained.model, report.task, x), rtol=0, atol=ATOL)
    assert report.macs_pruned < report.macs_dense


def test_flops_fraction_is_counted_from_kept_units(exported) -> None:
    trained, reports = exported["mlp"]
    for r in reports:
        k1, k2 = r.kept_units["1"][0], r.kept_units["3"][0]
        classes = len(r.labels)
        k1, k2 = max(k1, 1), max(k2, 1)  # a fully masked group keeps one zeroed unit
        assert r.macs_pruned == 64 * k1 + k1 * k2 + k2 * classes
        assert r.macs_dense == 64 * 32 + 32 * 24 + 24 * classes
        assert r.flops_fraction == pytest.approx(r.macs_pruned / r.macs_dense)


def test_resnet_image_size_defaults_to_the_timm_input_size(resnet, tmp_path: Path) -> None:
    report = export_task(resnet.model, 0, tmp_path / "r.onnx", check=False)
    assert report.input_shape == [None, 1, 224, 224] and report.image_size_defaulted
    assert report.max_abs_diff is None


def _mask_off(model: hatzoo.HATModel, groups: list[str], tasks: int = 1) -> hatzoo.HATModel:
    """Add tasks whose listed groups are fully masked (every other group keeps a random half)."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(tasks):
        t = model.add_task(num_classes=3)
        with torch.no_grad():
            for g in model.groups.values():
                e = model.embedding(g.name, t)
                e.copy_(-torch.ones_like(e) if g.name in groups else torch.randn(e.shape, generator=gen))
        model.end_task(t)
    return model.eval()


def test_zero_width_branches_load_and_run_in_onnx_runtime(tmp_path: Path) -> None:
    vit = hatzoo.create_model("hat-vit-tiny", img_size=16, patch_size=4, in_chans=1, depth=2)
    _mask_off(vit, ["blocks.0.attn.heads", "blocks.1.mlp.hidden"])
    net = vit.specialize(0)
    assert isinstance(net.backbone.blocks[0].attn, ConstantBranch)
    assert isinstance(net.backbone.blocks[1].mlp, ConstantBranch)
    resnet = hatzoo.create_model("hat-resnet18", in_chans=1)
    _mask_off(resnet, ["layer1.0.conv1", "layer3.1.conv1"])
    for model, shape, kwargs in ((vit, (1, 16, 16), {}), (resnet, (1, 32, 32), {"image_size": 32})):
        report = export_task(model, 0, tmp_path / f"{shape[-1]}.onnx", **kwargs)
        assert report.max_abs_diff <= ATOL
        x = np.random.default_rng(2).standard_normal((4, *shape)).astype(np.float32)
        np.testing.assert_allclose(_run(report.path, x), _hat(model, 0, x), rtol=0, atol=ATOL)
    assert report.kept_units["layer1.0.conv1"] == [0, 64]


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_float16_export_is_within_its_tolerance(exported, name: str, tmp_path: Path) -> None:
    trained, _ = exported[name]
    kwargs = {"image_size": 32} if name == "resnet" else {}
    report = export_task(trained.model, 1, tmp_path / "h.onnx", dtype="float16", **kwargs)
    graph = onnx.load(str(report.path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    x = np.random.default_rng(4).standard_normal((5, *trained.shape)).astype(np.float32)
    ref = _hat(trained.model, 1, x)
    y = _run(report.path, x.astype(np.float16))
    assert y.dtype == np.float16
    tol = 1e-2 * max(1.0, float(np.abs(ref).max()))
    assert report.tolerance == pytest.approx(tol, rel=0.5)
    assert np.abs(y.astype(np.float32) - ref).max() <= tol
    assert report.max_abs_diff <= report.tolerance


def test_export_bundle_is_read_and_served_like_the_hat_model(vit, tmp_path: Path) -> None:
    norm = {"mean": [0.5], "std": [0.25]}
    source = {"repo_id": "test-org/hat-vit-tiny", "revision": "abc123"}
    root = export_bundle(
        vit.model, tmp_path / "bundle", model_name="tiny", source=source, normalization=norm, progress=False
    )
    bundle = read_bundle(root)
    assert bundle.model == "tiny" and bundle.opset == 18 and bundle.source == source
    assert sorted(bundle.tasks) == ["0", "1", "2"]
    for tid, spec in bundle.tasks.items():
        t = int(tid)
        assert spec.file == f"task-{t}.onnx"
        assert spec.input_shape == (None, 1, 16, 16) and spec.dtype == "float32"
        assert spec.labels == tuple(vit.model.tasks[t].labels)
        assert spec.mean == (0.5,) and spec.std == (0.25,)
        assert spec.kept_units == {k: tuple(v) for k, v in vit.model.specialize(t).kept_units.items()}
        assert 0 < spec.flops_fraction < 1 and spec.max_abs_diff <= ATOL
    x = np.random.default_rng(5).standard_normal((3, 1, 16, 16)).astype(np.float32)
    app = create_app([root], global_thread_pool=False)  # keep this process's other ORT sessions legal
    with TestClient(app) as client:
        for t in vit.tasks:
            r = client.post(
                f"/v1/models/tiny/tasks/{t}:predict",
                content=npy(x),
                headers={"Content-Type": "application/x-npy"},
            )
            assert r.status_code == 200, r.text
            logits = np.asarray(r.json()["logits"], dtype=np.float32)
            np.testing.assert_allclose(logits, _hat(vit.model, t, x), rtol=0, atol=ATOL)


def test_float16_bundle_manifest_says_float16(mlp, tmp_path: Path) -> None:
    root = export_bundle(
        mlp.model,
        tmp_path / "b16",
        model_name="mlp",
        tasks=[0],
        dtype="float16",
        input_shape=(1, 8, 8),
        progress=False,
    )
    spec = read_bundle(root).tasks["0"]
    assert spec.dtype == "float16" and spec.input_shape == (None, 1, 8, 8)


def test_a_bundle_export_replaces_its_folder_whole(mlp, tmp_path: Path) -> None:
    """A re-export of fewer tasks leaves no stale graph; one that fails partway, or an export into a folder
    of other files, leaves the folder as it was."""
    root = tmp_path / "bundle"
    options = {"model_name": "mlp", "input_shape": (1, 8, 8), "progress": False}
    assert export_bundle(mlp.model, root, tasks=[0, 1, 2], **options) == root
    names = ["manifest.json", "task-0.onnx", "task-1.onnx", "task-2.onnx"]
    assert sorted(p.name for p in root.iterdir()) == names
    export_bundle(mlp.model, root, tasks=[1], **options)
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "task-1.onnx"]
    assert sorted(read_bundle(root, verify=True).tasks) == ["1"]
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    with pytest.raises(TaskError):  # task 0's graph is written, then task 9 (no such task) fails
        export_bundle(mlp.model, root, tasks=[0, 9], **options)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    assert sorted(read_bundle(root, verify=True).tasks) == ["1"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # nothing half-built is left beside it
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a bundle"):
        export_bundle(mlp.model, notes, tasks=[0], **options)
    assert [p.name for p in notes.iterdir()] == ["todo.txt"] and (notes / "todo.txt").read_text() == "keep me"


def test_verification_works_after_the_serving_pool_set_a_global_thread_pool(tmp_path: Path) -> None:
    """Once ONNX Runtime's global thread pool is on, export_task must still open its own sessions."""
    script = textwrap.dedent(
        f"""
        import torch, hatzoo
        from torch import nn
        from hatzoo.export.runtime import configure_environment
        from hatzoo.export.onnx_export import export_task
        configure_environment(global_thread_pool=True)
        m = hatzoo.hatify(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
        t = m.add_task(num_classes=3); m.end_task(t); m.eval()
        r = export_task(m, t, {str(tmp_path / "g.onnx")!r})
        print("diff", r.max_abs_diff)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split("diff")[-1]) <= ATOL


def test_export_errors_are_hat_errors(vit, mlp, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"differs from the HAT model by .*\(tolerance 1e-12"):
        export_task(vit.model, 0, tmp_path / "a.onnx", atol=1e-12)
    with pytest.raises(InputError, match="dtype"):
        export_task(vit.model, 0, tmp_path / "a.onnx", dtype="int8")
    with pytest.raises(InputError, match="fixed"):
        export_task(vit.model, 0, tmp_path / "a.onnx", image_size=32)
    with pytest.raises(TaskError):
        export_task(vit.model, 9, tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="input_shape"):
        export_bundle(mlp.model, tmp_path / "b", model_name="mlp", tasks=[0], progress=False)
    fresh = hatzoo.hatify(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    fresh.add_task(num_classes=2)
    with pytest.raises(ExportError, match="no ended task"):
        export_bundle(fresh, tmp_path / "c", model_name="x", progress=False)
