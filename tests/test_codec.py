"""Stored values: user data comes back unchanged whatever keys it has; registered codecs still apply (DESIGN §7)."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pydantic
import pydantic_core
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import ckflow
from ckflow import Engine, FlowState, Linear, _codec, task
from ckflow._codec import TAG, decode, decode_object, encode

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Point:
    """A type pydantic does not know: stored only through its codec."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def __repr__(self) -> str:
        return f"Point({self.x}, {self.y})"


@dataclasses.dataclass
class Tagged:
    """A dataclass whose fields pydantic writes as keys that look like a codec's value."""

    __ckflow_codec__: str
    value: int


@contextlib.contextmanager
def point_codec() -> Iterator[None]:
    """``Point`` registered as "test-point" (its data has the tag as a key too); the registry restored after."""
    registries: tuple[dict[Any, Any], ...] = (_codec._BY_TYPE, _codec._BY_NAME, _codec._ADAPTERS)
    saved = [dict(d) for d in registries]
    ckflow.register_codec(
        Point, encode=lambda p: {TAG: p.x, "value": p.y}, decode=lambda d: Point(d[TAG], d["value"]), name="test-point"
    )
    try:
        yield
    finally:
        for registry, before in zip(registries, saved, strict=True):
            registry.clear()
            registry.update(before)


@pytest.fixture
def codec() -> Iterator[None]:
    with point_codec():
        yield


#: Keys drawn to often be the tag, "value", the escaped tag, or text around the tag.
KEYS = st.one_of(
    st.sampled_from([TAG, "value", f"{TAG}~", f"{TAG}~~", "~", f"{TAG}x", f"x{TAG}"]),
    st.text(max_size=4),
    st.text(alphabet="~x", max_size=3).map(lambda s: TAG + s),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from([TAG, "test-point", "nope"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(KEYS, inner, max_size=4)
        | st.fixed_dictionaries({TAG: inner, "value": inner})  # the very shape of a codec's value
    ),
    max_leaves=25,
)

FORGED = {TAG: "nope", "value": 1}
#: A dict that carries a registered codec's name, in the shape of that codec's values.
IMPERSONATOR = {TAG: "test-point", "value": {TAG: 1, "value": 2}}


class TestRoundTrip:
    """decode(encode(v)) == v for any JSON data, whatever keys its dicts have."""

    @given(JSON)
    @example(FORGED)
    @example({f"{TAG}~": 1, TAG: {TAG: "x", "value": [f"{TAG}~~"]}})
    def test_any_json_value_round_trips(self, value: Any) -> None:
        """Without codecs, any JSON value (dicts keyed by the tag included) decodes to itself."""
        assert decode(encode(value), None) == value

    @given(JSON)
    def test_any_json_value_round_trips_with_a_codec_registered(self, value: Any) -> None:
        """With a codec registered, any JSON value still decodes to itself, never to the codec's type."""
        with point_codec():
            assert decode(encode(value), None) == value

    @given(st.dictionaries(KEYS, JSON, max_size=4), st.booleans())
    def test_objects_of_named_values_round_trip(self, values: dict[str, Any], registered: bool) -> None:
        """decode_object gives back a dict of named values, whatever the names and the values' keys."""
        with point_codec() if registered else contextlib.nullcontext():
            assert decode_object(encode(values), {}) == values

    @given(JSON)
    def test_typed_decode_round_trips(self, value: Any) -> None:
        """Decoding through an adapter sees the user's data, not its escaped form."""
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Any)
        assert decode(encode({"payload": value}), adapter) == {"payload": value}

    @pytest.mark.parametrize("value", [{"a": [1, 2.5, None]}, ["x", {"k": TAG}], f"a {TAG} in text", {"k": {"v": 1}}])
    def test_data_without_the_tag_as_a_key_is_pydantics_json(self, value: Any) -> None:
        """Without codecs, data whose keys are not the tag is written exactly as pydantic writes it."""
        assert encode(value) == pydantic_core.to_json(value).decode()

    def test_forged_dicts_stay_dicts(self) -> None:
        """A user dict shaped like a codec's value, with an unknown or a registered name, comes back as that dict."""
        assert decode(encode(FORGED), None) == FORGED
        with point_codec():
            assert decode(encode(IMPERSONATOR), None) == IMPERSONATOR
            assert decode(encode(FORGED), None) == FORGED

    def test_dataclass_with_a_tag_field_round_trips(self) -> None:
        """An object pydantic writes with the tag as a key comes back as itself, with or without codecs."""
        adapter = _codec._adapter_for(Tagged)
        assert decode(encode(Tagged("nope", 1)), adapter) == Tagged("nope", 1)
        with point_codec():
            adapter = _codec._adapter_for(Tagged)
            assert decode(encode([Tagged("test-point", 2)]), None) == [{TAG: "test-point", "value": 2}]
            assert decode(encode(Tagged("test-point", 2)), adapter) == Tagged("test-point", 2)


class TestCodecs:
    """Registered codecs still tag their values, next to user dicts that carry the tag."""

    def test_codec_values_inside_dicts_with_the_tag_key(self, codec: None) -> None:
        """A codec's value nested in user dicts that carry the tag decodes to its type; the dicts stay dicts."""
        value = {TAG: "test-point", "value": Point(1, 2), "more": [Point(3, 4), {TAG: Point(5, 6)}]}
        back = decode(encode(value), None)
        assert back == value
        assert type(back) is dict
        assert isinstance(back["value"], Point)
        assert isinstance(back["more"][1][TAG], Point)
        assert decode_object(encode({"v": value}), {}) == {"v": value}

    def test_codec_value_is_still_tagged(self, codec: None) -> None:
        """A codec's value is written as {tag: name, "value": data}; its data's keys are escaped like user data."""
        assert encode(Point(1, 2)) == f'{{"{TAG}":"test-point","value":{{"{TAG}~":1,"value":2}}}}'
        assert decode(encode(Point(1, 2)), None) == Point(1, 2)

    def test_unregistered_codec_is_refused(self) -> None:
        """A value written by a codec that is not registered in this process cannot be decoded."""
        with pytest.raises(ckflow.StoreError, match="'gone'"):
            decode(f'{{"{TAG}":"gone","value":1}}', None)


def forged_flow(seen: list[tuple[object, object]], started: anyio.Event, gate: anyio.Event) -> Linear:
    @task(provides="made")
    async def make(payload: dict) -> dict:  # type: ignore[type-arg]
        return IMPERSONATOR

    @task
    async def use(payload: dict, made: dict) -> None:  # type: ignore[type-arg]
        seen.append((payload, made))
        started.set()
        await gate.wait()

    return Linear("forged", make, use)


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://codec-{uuid.uuid4().hex}"
    return f"sqlite:///{tmp_path / 'runs.db'}"


class TestDurable:
    """Forged-looking user data in a durable run: the run resumes, and its consumers see the same data."""

    async def test_forged_input_and_result_survive_a_resume(self, store_url: str, codec: None) -> None:
        """An input and a result shaped like codec values are seen unchanged live and after a resume."""
        seen: list[tuple[object, object]] = []
        started, gate = anyio.Event(), anyio.Event()
        flow = forged_flow(seen, started, gate)
        with anyio.CancelScope() as scope:
            async with Engine(store=store_url) as engine:
                await engine.start(flow, {"payload": FORGED}, run_id="r")
                await started.wait()
                scope.cancel()
        gate.set()
        async with Engine(store=store_url) as engine:
            result = await (await engine.resume("r", flow=flow)).wait()
        assert result.state is FlowState.SUCCESS
        assert seen == [(FORGED, IMPERSONATOR), (FORGED, IMPERSONATOR)]
        assert all(type(payload) is dict and type(made) is dict for payload, made in seen)
        async with Engine(store=store_url) as engine:
            stored = await (await engine.attach("r", flow=flow)).wait()
        assert stored.state is FlowState.SUCCESS
        assert stored.outputs == {"made": IMPERSONATOR}

    @pytest.mark.parametrize("names", [(TAG, "value"), (f"{TAG}~", "value"), (TAG,)])
    async def test_values_named_like_the_tag(self, store_url: str, names: tuple[str, ...]) -> None:
        """Outputs named like the tag (and "value") come back from the store under those names."""
        values = {name: f"v{i}" for i, name in enumerate(names)}

        @task(provides=names)
        async def named() -> Any:
            return tuple(values.values()) if len(names) > 1 else values[names[0]]

        @task(provides="last")
        async def last() -> dict[str, str]:
            return values

        flow = Linear("named", named, last)
        async with Engine(store=store_url) as engine:
            await (await engine.start(flow, run_id="r")).wait()
        async with Engine(store=store_url) as engine:
            stored = await (await engine.attach("r", flow=flow)).wait()
        assert stored.outputs == {**values, "last": values}
