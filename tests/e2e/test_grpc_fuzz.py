"""Mutated gRPC messages from an AUTHENTICATED peer (it holds the cluster key and a gateway's
certificate, so every call reaches the handlers) at a real daemon's worker and coordinator ports.

Hypothesis draws, for every method of both services, messages with any field values (built from the
.proto descriptors: any strings, out-of-range integers, NaN, unknown enum numbers, huge repeated
fields) and raw or mutated protobuf bytes. Each call must end with a gRPC status the project gives
on purpose (never UNKNOWN, which is an exception no handler turned into an error) or an answer,
within its deadline; afterwards the daemon still serves a chat completion end to end and its log
holds no traceback, and its memory has grown less than a bound. Examples are bounded (CYNODE_FUZZ_EXAMPLES), so this runs in well under a minute.
"""

from __future__ import annotations

import os

import grpc
import httpx
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cynode.cluster_key import load_keys
from cynode.peer_auth import PeerAuth
from cynode.pki import PEER_NAME
from cynode.rpc import common_pb2, coordinator_pb2, worker_pb2
from daemon_harness import CynodeProcess

EXAMPLES = int(os.environ.get("CYNODE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CALL_TIMEOUT = 3.0
# Statuses that mean "the server answered on purpose": a cynode error for bad input or a state the
# call cannot change (cynode.rpc.errors; bytes that do not decode are INVALID_ARGUMENT), or a
# deadline that a legitimately waiting call (Admit queueing for a worker) ran out. Not UNKNOWN (an
# exception no handler turned into an error) nor INTERNAL (an engine failing on what it was given).
ON_PURPOSE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
              grpc.StatusCode.DEADLINE_EXCEEDED}
RSS_BOUND = 128 * 2**20  # growth of the daemon's resident memory allowed over all the fuzzing

METHODS = [(port, f"/{service.full_name}/{m.name}", m, m.server_streaming)
           for port, service in (("worker", worker_pb2.DESCRIPTOR.services_by_name["Worker"]),
                                 ("coordinator", coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]))
           for m in service.methods]


@pytest.fixture(scope="module")
def node(tmp_path_factory, redis_server, models_dir):
    proc = CynodeProcess(tmp_path_factory.mktemp("grpc-fuzz"), redis_url=redis_server.url, models_dir=models_dir,
                         extra={"worker": {"backend": "sim", "sim": {"tokens_per_second": 2000.0}}}).start(timeout=120)
    assert serves(proc)  # warm: the first request's lazy imports and caches are not growth
    proc.baseline_rss = rss_bytes(proc.proc.pid)
    yield proc
    assert proc.terminate() == 0, proc.log()


@pytest.fixture(scope="module")
def channels(node):
    auth = PeerAuth(load_keys(node.workdir / "data" / "cluster.key"), "fuzzing-gateway", roles=("gateway",))
    material = auth.material()
    credentials = grpc.ssl_channel_credentials(material.trusted_pem, material.key_pem, material.certificate_pem)
    made = {port: grpc.secure_channel(f"{node.host}:{node.ports[port]}", credentials,
                                      options=[("grpc.ssl_target_name_override", PEER_NAME)])
            for port in ("worker", "coordinator")}
    yield made
    for channel in made.values():
        channel.close()


# --- messages of any content, from the descriptors -----------------------------------------------

_INTS = {F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1), F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
         F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
         F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1), F.TYPE_UINT64: (0, 2**64 - 1),
         F.TYPE_FIXED64: (0, 2**64 - 1)}
texts = st.text(max_size=40) | st.sampled_from(["sim", "", "stop", "length", "user", "assistant", "x" * 5000])


def _scalar(field) -> st.SearchStrategy:
    if field.type in _INTS:
        low, high = _INTS[field.type]
        return st.integers(low, high) | st.integers(-3, 300).filter(lambda v: low <= v <= high)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type == F.TYPE_DOUBLE:
        return st.floats()
    if field.type == F.TYPE_STRING:
        return texts
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=40)
    if field.type == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values]) | st.integers(-(2**31), 2**31 - 1)
    raise AssertionError(field.type)


def messages_of(descriptor, depth: int = 0) -> st.SearchStrategy:
    cls = message_factory.GetMessageClass(descriptor)
    values = {}
    for field in descriptor.fields:
        if field.type == F.TYPE_MESSAGE:
            if depth >= 3:
                continue
            one = st.deferred(lambda f=field: messages_of(f.message_type, depth + 1))
        else:
            one = _scalar(field)
            if field.name == "model":  # often a model the node serves, so the call gets past the lookup
                one = st.just("sim") | one
            elif field.name == "epoch":  # often a current one, so the call gets past the fencing
                one = st.integers(0, 10**6) | one
        values[field.name] = st.lists(one, max_size=4 if depth else 20) if field.is_repeated else one

    def build(chosen: dict):
        message = cls()
        for name, value in chosen.items():
            field = descriptor.fields_by_name[name]
            if field.is_repeated and field.type == F.TYPE_MESSAGE:
                getattr(message, name).extend(value)
            elif field.is_repeated:
                getattr(message, name).extend(value)
            elif field.type == F.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=values).map(build)


_CHAT = [common_pb2.ChatMessage(role="user", content="hi")]
# A request each method serves, which the fuzzer changes a few fields of: that reaches the checks
# and the engine behind the first refusal. The epoch is above any real one (accepted; it moves no fence).
VALID = {"Predict": worker_pb2.PredictRequest(model="sim", messages=_CHAT, epoch=2**40,
                                              sampling=common_pb2.SamplingParams(max_tokens=8)),
         "Embed": worker_pb2.EmbedRequest(model="sim", input=["hi"], epoch=2**40),
         "Admit": coordinator_pb2.AdmitRequest(request_id="r", model="sim", messages=_CHAT,
                                               sampling=common_pb2.SamplingParams(max_tokens=8, temperature=0.0))}


@st.composite
def payloads(draw, method) -> bytes:
    """A message of any field values, a served request with some of them changed, those bytes
    mutated, or bytes of no message at all."""
    random = draw(messages_of(method.input_type))
    if method.name in VALID and draw(st.booleans()):
        served = type(random)()
        served.CopyFrom(VALID[method.name])
        served.MergeFrom(random)
        random = served
    raw = random.SerializeToString()
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return raw
    if kind == 1 and raw:
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == 2:
        return raw[: draw(st.integers(0, len(raw)))] + draw(st.binary(max_size=20))
    return draw(st.binary(max_size=200))


def call(channel: grpc.Channel, path: str, streaming: bool, payload: bytes) -> grpc.StatusCode:
    """Send raw bytes; the status the call ended with (OK for an answer)."""
    try:
        if streaming:
            stream = channel.unary_stream(path)(payload, timeout=CALL_TIMEOUT)
            for i, _ in enumerate(stream):
                if i >= 30:
                    stream.cancel()
                    return grpc.StatusCode.OK
        else:
            channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def serves(node: CynodeProcess) -> bool:
    reply = httpx.post(f"{node.base_url}/v1/chat/completions", timeout=60, json={
        "model": "sim", "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {node.api_key()}", "Cache-Control": "no-cache"})
    return reply.status_code == 200 and reply.headers.get("X-Cache") == "miss"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("port,path,method,streaming", METHODS, ids=[path for _, path, _, _ in METHODS])
def test_mutated_messages_from_a_member_get_a_status_and_the_node_serves_on(node, channels, port, path, method, streaming):
    seen: dict[grpc.StatusCode, int] = {}

    @FUZZ
    @given(payloads(method))
    def fuzz(payload: bytes) -> None:
        code = call(channels[port], path, streaming, payload)
        seen[code] = seen.get(code, 0) + 1
        assert code == grpc.StatusCode.OK or code in ON_PURPOSE, f"{path}: {code} for {payload[:80]!r}"

    fuzz()
    print(f"{path}: {dict((c.name, n) for c, n in seen.items())}")
    assert node.proc.poll() is None
    assert serves(node), f"the node stopped serving after fuzzing {path}"
    assert "Traceback" not in node.log_path.read_text()
    grown = rss_bytes(node.proc.pid) - node.baseline_rss
    assert grown < RSS_BOUND, f"RSS grew {grown / 2**20:.0f} MiB"
