"""Request and response models of every route (pydantic): they validate request envelopes and make the
OpenAPI schema at /openapi.json. Pixel arrays stay plain JSON and are checked by ``decode.number_array``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="what was wrong and what to do")


class Health(BaseModel):
    status: Literal["ok"]
    models: int
    sessions_loaded: int


class Normalization(BaseModel):
    mean: list[float]
    std: list[float]


class TaskInfo(BaseModel):
    id: str
    labels: list[str]
    num_classes: int
    input_shape: list[int | None] = Field(description="[batch (null: any), C, H, W]")
    dtype: Literal["float32", "float16"]
    normalization: Normalization
    flops_fraction: float | None
    kept_units: dict[str, tuple[int, int]]
    v2_name: str = Field(description="the task's model name on the /v2 routes and in a Triton repository")


class ModelInfo(BaseModel):
    name: str
    source: dict[str, str | None] = Field(description="Hub repo id and revision the bundle was exported from")
    opset: int | None
    tasks: list[TaskInfo]


class ModelList(BaseModel):
    models: list[ModelInfo]


class PredictRequest(BaseModel):
    """JSON body of :predict. Also accepted: a .npy body, a PNG/JPEG body, or a multipart form with
    'file' parts (images) and an optional 'top_k' field."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] = Field(description="[B, C, H, W] nested lists of numbers")
    top_k: StrictInt = Field(5, ge=0, description="labels to return per image (clamped to the class count)")
    normalized: StrictBool | None = Field(
        None,
        description="true: inputs are already (x - mean) / std; false: float pixels in [0, 1] that the "
        "server normalizes. Omitted: treated as true, with a warning in the answer when every value "
        "lies in [0, 1]. Ignored for uint8 pixels, which are always normalized by the server.",
    )
    dtype: Literal["float", "uint8"] = Field("float", description="uint8: inputs are 0-255 pixels")


class TopK(BaseModel):
    label: str
    index: int
    score: float = Field(description="softmax probability")


class PredictResponse(BaseModel):
    model: str
    task: str
    logits: list[list[float]]
    top_k: list[list[TopK]]
    warnings: list[str] = Field(default_factory=list)


class AgnosticPredictResponse(BaseModel):
    """Answer of ``/v1/models/{model}:predict``: per input row, the inferred task and its label."""

    model: str
    rule: str = Field(description="the task-inference rule used (see GET /openapi.json: the rule parameter)")
    tasks: list[str] = Field(description="the model's task ids, in the column order of scores")
    task: list[str] = Field(description="per row: the inferred task (highest score)")
    class_index: list[int] = Field(description="per row: the arg-max class within the inferred task")
    label: list[str] = Field(description="per row: that class's label")
    scores: list[list[float]] = Field(description="per row: every task's score, higher = more likely")
    warnings: list[str] = Field(default_factory=list)


class V2Health(BaseModel):
    live: bool | None = None
    ready: bool | None = None


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2InferInput(BaseModel):
    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = Field(None, description="row-major values, flat or nested")


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="binary_data (bool): answer this output as binary data; classification (int k): answer "
        "the k best classes as 'score:index:label' strings (BYTES)",
    )


class V2InferRequest(BaseModel):
    id: str | None = Field(None, description="echoed in the answer when sent")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="binary_data_output (bool): every output as binary data; rule: the task-inference rule "
        "of a model answering without a task id",
    )
    inputs: list[V2InferInput]
    outputs: list[V2RequestedOutput] | None = None


class V2InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size when the output's bytes follow the JSON header"
    )
    data: list[float | int | str] | None = Field(None, description="row-major values (absent when binary)")


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2InferOutput]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="the protocol extensions this server implements")


class V2Stat(BaseModel):
    count: int
    ns: int = Field(description="total nanoseconds")


class V2ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="milliseconds since the epoch (0: none yet)")
    inference_count: int = Field(description="rows (images) answered")
    execution_count: int = Field(description="session runs (a run may answer several requests)")
    inference_stats: dict[str, V2Stat] = Field(
        description="success and fail (whole requests), queue (waiting for a run) and compute_infer (runs)"
    )
    batch_stats: list[dict[str, Any]]


class V2Statistics(BaseModel):
    model_stats: list[V2ModelStatistics]


class V2RepositoryModel(BaseModel):
    name: str
    version: str
    state: Literal["READY"]
