"""User values as JSON text and back: task results, run inputs, checkpoint snapshots.

Encoding goes through pydantic (``pydantic_core.to_json``), which knows
pydantic models, dataclasses, datetimes, UUIDs, decimals, enums, sets and
tuples; ``bytes`` are written as base64. A type pydantic does not know can be
given a codec with ``ckflow.register_codec``. A value that still cannot be
encoded fails its task with ``ResultNotSerializableError``.

Decoding is typed where the code says what to expect: a task's result is
validated against its return annotation and an input against the annotation
of a parameter that reads it, so that a ``-> Volume`` model or a
``-> tuple[str, int]`` comes back as itself after a resume. Without an
annotation, a value comes back as plain JSON data (a tuple as a list).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pydantic_core
from pydantic import ConfigDict, TypeAdapter

from ckflow._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ckflow._task import Task

__all__ = ["decode", "decode_object", "encode", "input_adapter", "register_codec", "result_adapter"]

#: The key that marks a value encoded by a registered codec: ``{"__ckflow_codec__": name, "value": ...}``.
TAG: Final = "__ckflow_codec__"
_TAG_BYTES: Final = TAG.encode()
#: why a string with a lone surrogate (``"\ud800"``, say from ``os.fsdecode`` of bytes that are not UTF-8) is refused
_SURROGATE_PROBLEM: Final = (
    "a string in it holds a lone surrogate such as '\\ud800', which UTF-8 cannot encode: repair the text, "
    "e.g. with `s.encode('utf-8', 'replace').decode()`"
)
_CONFIG: Final = ConfigDict(arbitrary_types_allowed=True, ser_json_bytes="base64", val_json_bytes="base64")


@dataclass(frozen=True, slots=True)
class _Codec:
    name: str
    cls: type[Any]
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_BY_TYPE: Final[dict[type[Any], _Codec]] = {}
_BY_NAME: Final[dict[str, _Codec]] = {}


def register_codec(
    cls: type[Any],
    *,
    encode: Callable[[Any], Any],
    decode: Callable[[Any], Any],
    name: str | None = None,
) -> None:
    """Teach ckflow to store values of ``cls``, which pydantic cannot serialise by itself.

    ``encode(value)`` returns JSON-able data; ``decode(data)`` rebuilds the
    value. ``name`` (default: the class's qualified name) is written next to
    the data, so keep it stable across releases of your code. Register codecs
    at import time, in every process that runs or resumes the flows.

    Example::

        ckflow.register_codec(Money, encode=lambda m: [str(m.amount), m.currency],
                              decode=lambda d: Money(Decimal(d[0]), d[1]))

    Raises:
        TypeError: ``cls`` is not a class, or ``encode``/``decode`` are not callable.
        ValueError: another class is registered under ``name``.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_codec() needs a class, got {cls!r}.")
    functions: tuple[object, object] = (encode, decode)
    if not all(callable(f) for f in functions):
        raise TypeError(f"register_codec({cls.__qualname__}) needs callable `encode` and `decode`.")
    key = name or f"{cls.__module__}.{cls.__qualname__}"
    other = _BY_NAME.get(key)
    if other is not None and other.cls is not cls:
        raise ValueError(f"Codec name {key!r} is already registered for {other.cls!r}; pass another `name=`.")
    codec = _Codec(key, cls, encode, decode)
    _BY_TYPE[cls] = codec
    _BY_NAME[key] = codec
    _ADAPTERS.clear()


def _tagged(value: Any) -> Any:
    """``value`` with every object of a registered type replaced by its tagged encoding."""
    codec = _BY_TYPE.get(type(value))
    if codec is not None:
        return {TAG: codec.name, "value": _tagged(codec.encode(value))}
    if isinstance(value, dict):
        return {k: _tagged(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_tagged(v) for v in value]
    return value


def _untagged(data: Any) -> Any:
    if isinstance(data, dict):
        name = data.get(TAG)
        if name is not None and len(data) == 2 and "value" in data:
            codec = _BY_NAME.get(name)
            if codec is None:
                raise StoreError(
                    f"A stored value was written with codec {name!r}, which is not registered in this "
                    "process; call `ckflow.register_codec()` for it before resuming."
                )
            return codec.decode(_untagged(data["value"]))
        return {k: _untagged(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_untagged(v) for v in data]
    return data


def encode(value: Any) -> str:
    """``value`` as JSON text.

    Raises:
        TypeError: pydantic cannot serialise ``value`` and no codec covers it (the message names the type).
    """
    if _BY_TYPE:
        value = _tagged(value)
    try:
        return pydantic_core.to_json(value, bytes_mode="base64").decode()
    except pydantic_core.PydanticSerializationError as exc:
        if "surrogates not allowed" in str(exc):
            raise TypeError(_SURROGATE_PROBLEM) from exc
        raise TypeError(str(exc)) from exc


def decode(text: str, adapter: TypeAdapter[Any] | None) -> Any:
    """The value stored as ``text``, validated by ``adapter`` when the code gave a type."""
    raw = text.encode()
    if adapter is not None and _TAG_BYTES not in raw:
        return adapter.validate_json(raw)
    data = pydantic_core.from_json(raw)
    if _TAG_BYTES in raw:
        data = _untagged(data)
    return data if adapter is None else adapter.validate_python(data)


def decode_object(text: str, adapters: Mapping[str, TypeAdapter[Any] | None]) -> dict[str, Any]:
    """A JSON object of named values (run inputs, a snapshot), each validated by its own adapter."""
    raw = text.encode()
    data = pydantic_core.from_json(raw)
    if _TAG_BYTES in raw:
        data = _untagged(data)
    if not isinstance(data, dict):
        raise StoreError(f"Expected a JSON object of named values, found {type(data).__name__}.")
    out: dict[str, Any] = {}
    for key, value in data.items():
        adapter = adapters.get(key)
        out[key] = value if adapter is None else adapter.validate_python(value)
    return out


#: annotation -> adapter (None when the annotation says nothing useful); cleared when codecs change
_ADAPTERS: Final[dict[Any, TypeAdapter[Any] | None]] = {}
_UNTYPED: Final = (Any, object, None, type(None))


def _adapter_for(annotation: Any) -> TypeAdapter[Any] | None:
    if annotation in _UNTYPED:
        return None
    try:
        cached = _ADAPTERS.get(annotation, _ADAPTERS)
    except TypeError:  # an unhashable annotation
        cached = _ADAPTERS
    if cached is not _ADAPTERS:
        return cached  # type: ignore[return-value]
    adapter: TypeAdapter[Any] | None = None
    for config in (_CONFIG, None):
        try:
            # A model or dataclass brings its own config, and pydantic refuses another one for it.
            adapter = TypeAdapter(annotation, config=config)
            break
        except Exception:
            # A type pydantic cannot build a validator for (and a codec may cover): keep the raw data.
            continue
    try:
        _ADAPTERS[annotation] = adapter
    except TypeError:
        pass
    return adapter


def _hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        # Annotations naming what is not importable here (a class local to a function, say).
        return {}


def result_adapter(task: Task) -> TypeAdapter[Any] | None:
    """The adapter that rebuilds ``task``'s result from JSON, from its return annotation."""
    return _adapter_for(_hints(task._execute_function()).get("return"))


def input_adapter(task: Task, parameter: str) -> TypeAdapter[Any] | None:
    """The adapter for the value ``task`` reads as ``parameter``, from that parameter's annotation."""
    return _adapter_for(_hints(task._execute_function()).get(parameter))
