import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadedModel(_message.Message):
    __slots__ = ("pid", "state", "memory_bytes", "measured_bytes", "gpu_layers", "ctx", "in_flight", "idle_seconds", "loaded_at", "priority", "pinned", "keep_alive_seconds")
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CTX_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    state: str
    memory_bytes: int
    measured_bytes: int
    gpu_layers: int
    ctx: int
    in_flight: int
    idle_seconds: float
    loaded_at: _timestamp_pb2.Timestamp
    priority: int
    pinned: bool
    keep_alive_seconds: float
    def __init__(self, pid: _Optional[int] = ..., state: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., measured_bytes: _Optional[int] = ..., gpu_layers: _Optional[int] = ..., ctx: _Optional[int] = ..., in_flight: _Optional[int] = ..., idle_seconds: _Optional[float] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority: _Optional[int] = ..., pinned: _Optional[bool] = ..., keep_alive_seconds: _Optional[float] = ...) -> None: ...

class LocalModel(_message.Message):
    __slots__ = ("name", "status", "backend", "format", "path", "error", "size_bytes", "architecture", "layer_count", "context_length", "quantization", "created_at", "last_scanned", "priority", "pinned", "ctx", "gpu_layers", "keep_alive_seconds", "parallel", "extra_args", "configured", "loaded", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SCANNED_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    CTX_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_FIELD_NUMBER: _ClassVar[int]
    EXTRA_ARGS_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: str
    backend: str
    format: str
    path: str
    error: str
    size_bytes: int
    architecture: str
    layer_count: int
    context_length: int
    quantization: str
    created_at: _timestamp_pb2.Timestamp
    last_scanned: _timestamp_pb2.Timestamp
    priority: int
    pinned: bool
    ctx: int
    gpu_layers: int
    keep_alive_seconds: float
    parallel: int
    extra_args: _containers.RepeatedScalarFieldContainer[str]
    configured: bool
    loaded: LoadedModel
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., status: _Optional[str] = ..., backend: _Optional[str] = ..., format: _Optional[str] = ..., path: _Optional[str] = ..., error: _Optional[str] = ..., size_bytes: _Optional[int] = ..., architecture: _Optional[str] = ..., layer_count: _Optional[int] = ..., context_length: _Optional[int] = ..., quantization: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_scanned: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority: _Optional[int] = ..., pinned: _Optional[bool] = ..., ctx: _Optional[int] = ..., gpu_layers: _Optional[int] = ..., keep_alive_seconds: _Optional[float] = ..., parallel: _Optional[int] = ..., extra_args: _Optional[_Iterable[str]] = ..., configured: _Optional[bool] = ..., loaded: _Optional[_Union[LoadedModel, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[LocalModel]
    def __init__(self, models: _Optional[_Iterable[_Union[LocalModel, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ScanModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScanModelsResponse(_message.Message):
    __slots__ = ("added", "updated", "missing", "corrupt", "unchanged", "removed")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    updated: _containers.RepeatedScalarFieldContainer[str]
    missing: _containers.RepeatedScalarFieldContainer[str]
    corrupt: _containers.RepeatedScalarFieldContainer[str]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Optional[_Iterable[str]] = ..., updated: _Optional[_Iterable[str]] = ..., missing: _Optional[_Iterable[str]] = ..., corrupt: _Optional[_Iterable[str]] = ..., unchanged: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "gpu_layers", "ctx")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CTX_FIELD_NUMBER: _ClassVar[int]
    name: str
    gpu_layers: int
    ctx: int
    def __init__(self, name: _Optional[str] = ..., gpu_layers: _Optional[int] = ..., ctx: _Optional[int] = ...) -> None: ...

class LoadProgress(_message.Message):
    __slots__ = ("model", "stage", "detail", "percent", "loaded")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    model: str
    stage: str
    detail: str
    percent: float
    loaded: LocalModel
    def __init__(self, model: _Optional[str] = ..., stage: _Optional[str] = ..., detail: _Optional[str] = ..., percent: _Optional[float] = ..., loaded: _Optional[_Union[LocalModel, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: LocalModel
    def __init__(self, model: _Optional[_Union[LocalModel, _Mapping]] = ...) -> None: ...

class SwitchModelRequest(_message.Message):
    __slots__ = ("from_model", "to_model")
    FROM_MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_MODEL_FIELD_NUMBER: _ClassVar[int]
    from_model: str
    to_model: str
    def __init__(self, from_model: _Optional[str] = ..., to_model: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModelEvent(_message.Message):
    __slots__ = ("kind", "model", "state", "reason", "detail", "at")
    class DetailEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    model: str
    state: str
    reason: str
    detail: _containers.ScalarMap[str, str]
    at: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[_Mapping[str, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
