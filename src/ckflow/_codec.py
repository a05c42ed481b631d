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

A registered codec's value is written as ``{"__ckflow_codec__": name, "value": data}``. So that user data
never reads as one, a user dict's key that is the tag, or the tag followed by ``~`` marks, is written with one
more ``~`` and read back without it: user data round-trips unchanged whatever keys it has. The common case
(no codec registered, no tag text in the JSON) is one ``pydantic_core.to_json`` call and no walk.
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

__all__ = [
    "annotation_adapter",
    "decode",
    "decode_object",
    "encode",
    "encode_name",
    "input_adapter",
    "parameter_annotations",
    "register_codec",
    "result_adapter",
    "to_jsonable",
]

#: The key that marks a value encoded by a registered codec: ``{"__ckflow_codec__": name, "value": ...}``.
TAG: Final = "__ckflow_codec__"
_TAG_BYTES: Final = TAG.encode()
#: The escape mark added to a user dict's key that is the tag (or the tag and marks already).
_MARK: Final = "~"
_SCALARS: Final = (str, int, float, bool, bytes, bytearray)
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


def _is_tag_key(key: object) -> bool:
    """Whether ``key`` is the tag followed by zero or more escape marks (``TAG``, ``TAG~``, ``TAG~~``...)."""
    return isinstance(key, str) and key.startswith(TAG) and not key[len(TAG) :].strip(_MARK)


def _escaped(key: Any) -> Any:
    """A user dict's ``key`` as written: one more mark on a tag-like key, so that no user dict has the tag."""
    return key + _MARK if _is_tag_key(key) else key


def _unescaped(key: str) -> str:
    return key[:-1] if key != TAG and _is_tag_key(key) else key


def _tagged(value: Any) -> Any:
    """``value`` as data pydantic writes as is: objects of registered types tagged, user dicts' keys escaped."""
    codec = _BY_TYPE.get(type(value))
    if codec is not None:
        return {TAG: codec.name, "value": _tagged(codec.encode(value))}
    if isinstance(value, dict):
        return {_escaped(k): _tagged(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_tagged(v) for v in value]
    if value is None or isinstance(value, _SCALARS):
        return value
    # An object pydantic serialises by itself (a model, a dataclass...): its JSON data, escaped if it has to be.
    raw = pydantic_core.to_json(value, bytes_mode="base64")
    return value if _TAG_BYTES not in raw else _tagged(pydantic_core.from_json(raw))


def _untagged(data: Any) -> Any:
    """The inverse of ``_tagged``: tagged objects rebuilt by their codecs, user dicts' keys unescaped."""
    if isinstance(data, dict):
        name = data.get(TAG)
        if isinstance(name, str) and len(data) == 2 and "value" in data:
            codec = _BY_NAME.get(name)
            if codec is None:
                raise StoreError(
                    f"A stored value was written with codec {name!r}, which is not registered in this "
                    "process; call `ckflow.register_codec()` for it before resuming."
                )
            return codec.decode(_untagged(data["value"]))
        # A user dict (one with the tag itself was written before keys were escaped: it stays a dict).
        return {_unescaped(k): _untagged(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_untagged(v) for v in data]
    return data


def encode(value: Any) -> str:
    """``value`` as JSON text.

    A user dict's key that is the tag (or the tag followed by escape marks) gets one more mark, so that stored
    user data never looks like a codec's value and comes back unchanged whatever keys it has.

    Raises:
        TypeError: pydantic cannot serialise ``value`` and no codec covers it (the message names the type).
    """
    try:
        if not _BY_TYPE:
            raw = pydantic_core.to_json(value, bytes_mode="base64")
            if _TAG_BYTES not in raw:
                return raw.decode()  # the common case: nothing to tag or escape, no walk
            # The tag's text is somewhere (maybe only in a string): escape the keys of the JSON data.
            value = pydantic_core.from_json(raw)
        return pydantic_core.to_json(_tagged(value), bytes_mode="base64").decode()
    except pydantic_core.PydanticSerializationError as exc:
        if "surrogates not allowed" in str(exc):
            raise TypeError(_SURROGATE_PROBLEM) from exc
        raise TypeError(str(exc)) from exc


def _fallback(value: Any) -> Any:
    codec = _BY_TYPE.get(type(value))
    return repr(value) if codec is None else to_jsonable(codec.encode(value))


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON data (dicts, lists, str, numbers, None) for a client to read, never raising.

    Pydantic writes what it knows (``bytes`` as base64), a registered codec's type is written as its ``encode``
    returns, and anything else as its ``repr``: a view of a run never fails on an odd value. Not reversible:
    codec values carry no tag here.
    """
    try:
        return pydantic_core.to_jsonable_python(value, fallback=_fallback, bytes_mode="base64")
    except Exception:
        # Serialisation failed inside the value (a surrogate, a raising property...): show what it is.
        return repr(value)


def encode_name(name: str) -> str:
    """``name`` as the JSON text of a key of an object of named values (a snapshot), escaped as ``encode`` does."""
    return pydantic_core.to_json(_escaped(name)).decode()


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
    return _adapter_for(_hints(task.execute_function()).get("return"))


def parameter_annotations(task: Task) -> dict[str, Any]:
    """The annotations of ``task``'s parameters (and ``return``), resolved; empty where they cannot be."""
    return _hints(task.execute_function())


def annotation_adapter(annotation: Any) -> TypeAdapter[Any] | None:
    """The adapter that validates values of ``annotation`` (None when it says nothing to check: none, ``Any``)."""
    return _adapter_for(annotation)


def input_adapter(task: Task, parameter: str) -> TypeAdapter[Any] | None:
    """The adapter for the value ``task`` reads as ``parameter``, from that parameter's annotation."""
    return _adapter_for(_hints(task.execute_function()).get(parameter))
