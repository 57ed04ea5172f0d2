"""Triton model repository export: layout, and config.pbtxt parsed into Triton's own ModelConfig message."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest
from google.protobuf import text_format

from hatzoo.errors import ExportError
from hatzoo.export.triton import export_triton_repository


@pytest.fixture(scope="module")
def pb():
    """Triton's model_config_pb2 module, loaded from tritonclient without its grpc-only package init."""
    try:
        dist = importlib.metadata.distribution("tritonclient")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("tritonclient is missing: run scripts/bootstrap.sh (pip install -e '.[test]')")
    path = Path(dist.locate_file("tritonclient/grpc/model_config_pb2.py"))
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_triton_repository_configs_parse(pb, bundle: Path, tmp_path: Path) -> None:
    dirs = export_triton_repository(bundle, tmp_path, max_batch_size=16, instance_count=2, kind="KIND_CPU")
    assert [d.name for d in dirs] == ["tiny-cnn_task0", "tiny-cnn_task1", "tiny-cnn_task2"]
    for d, k in zip(dirs, (3, 4, 5), strict=True):
        assert (d / "1" / "model.onnx").read_bytes() == (bundle / f"task{d.name[-1]}.onnx").read_bytes()
        assert (d / "labels.txt").read_text().splitlines() == [
            f"tiny-cnn-t{d.name[-1]}-c{i}" for i in range(k)
        ]
        cfg = text_format.Parse((d / "config.pbtxt").read_text(), pb.ModelConfig())
        assert cfg.name == d.name and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
        (inp,), (out,) = cfg.input, cfg.output
        assert (inp.name, inp.data_type, list(inp.dims)) == ("x", pb.TYPE_FP32, [1, 8, 8])
        assert (out.name, out.data_type, list(out.dims)) == ("logits", pb.TYPE_FP32, [k])
        assert out.label_filename == "labels.txt"
        assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
        (ig,) = cfg.instance_group
        assert ig.count == 2 and ig.kind == pb.ModelInstanceGroup.KIND_CPU


def test_triton_options(pb, bundle: Path, tmp_path: Path) -> None:
    (d,) = export_triton_repository(bundle, tmp_path, tasks=[2], preferred_batch_sizes=[2, 8])
    cfg = text_format.Parse((d / "config.pbtxt").read_text(), pb.ModelConfig())
    assert cfg.max_batch_size == 32 and list(cfg.dynamic_batching.preferred_batch_size) == [2, 8]
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_AUTO
    with pytest.raises(ExportError, match="no task"):
        export_triton_repository(bundle, tmp_path, tasks=[7])
    with pytest.raises(ExportError, match="kind"):
        export_triton_repository(bundle, tmp_path, kind="GPU")
    with pytest.raises(ExportError, match="preferred_batch_sizes"):
        export_triton_repository(bundle, tmp_path, max_batch_size=8, preferred_batch_sizes=[16])
