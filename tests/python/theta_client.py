#!/usr/bin/env python3
"""A third-party Theta client, written from docs/PROTOCOL.md alone.

Usage: theta_client.py HOST:PORT WORKDIR

It generates gRPC stubs from proto/proto/theta.proto (grpcio-tools) and FlatBuffers code
from schemas/fbs (flatc --python), then: checks the signing test vectors, creates a session
with its own Ed25519 key (cryptography), creates an entity and moves it, reads the entries
back with ReadLog, recomputes their entry hashes, and checks an inclusion proof with its own
RFC 6962 / RFC 9162 code. Exits non-zero on any mismatch.
"""
import hashlib
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
addr, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
subprocess.check_call([sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto/proto"),
                       "--python_out=" + work, "--grpc_python_out=" + work, os.path.join(ROOT, "proto/proto/theta.proto")])
fbs = sorted(os.path.join(ROOT, "schemas/fbs", f) for f in os.listdir(os.path.join(ROOT, "schemas/fbs")) if f.endswith(".fbs"))
subprocess.check_call(["flatc", "--python", "-o", work] + fbs)
sys.path.insert(0, work)

import flatbuffers  # noqa: E402
import grpc  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

import theta_pb2 as pb  # noqa: E402
import theta_pb2_grpc as rpc  # noqa: E402
from theta.fb import CommandBody, Envelope, Command, CreateSession, CreateEntity, SetTransform, Vec3, Quat  # noqa: E402

DOMAIN = b"theta/command/v1\x00"


def raw_public(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- Test vectors (docs/PROTOCOL.md, "Test vectors") ---------------------------------
vector_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
assert raw_public(vector_key).hex() == "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8", "vector public key"
vector1_body = bytes.fromhex(
    "2400000054484342000000001800300008000c0014001c0024000000000000000700100018000000000000014c000000240000006000000001"
    "000000000000002a000000000000000068e5cf8b010000000000002000000003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc"
    "8664125531b81000000000112233445566778899aabbccddeeff000006000800040006000000040000000400000064656d6f00000000")
vector1_sig = ("9a43c5aeab9fa993389e88cecb2e17081a0d52802cba7f08b717a9dbc103ab3d"
               "9cf1ac098b20179bdf90088da4ff954b70ac0a9d9cf86782883829f68af29e03")
assert vector_key.sign(DOMAIN + vector1_body).hex() == vector1_sig, "vector 1 signature"
b = CommandBody.CommandBody.GetRootAs(vector1_body, 0)
assert (b.Lamport(), b.Nonce(), b.CommandType()) == (1, 42, Command.Command.CreateSession), "vector 1 fields"
print("test vectors: ok")


# --- Building and signing commands ---------------------------------------------------
def body(session, key, lamport, nonce, entity, component, kind, build_payload):
    builder = flatbuffers.Builder(256)
    payload = build_payload(builder)
    s = builder.CreateByteVector(session)
    a = builder.CreateByteVector(raw_public(key))
    CommandBody.Start(builder)
    CommandBody.AddSession(builder, s)
    CommandBody.AddAuthor(builder, a)
    CommandBody.AddLamport(builder, lamport)
    CommandBody.AddNonce(builder, nonce)
    CommandBody.AddWallClockMs(builder, 0)
    CommandBody.AddEntity(builder, entity)
    CommandBody.AddComponent(builder, component)
    CommandBody.AddBaseVersion(builder, 0)
    CommandBody.AddCommandType(builder, kind)
    CommandBody.AddCommand(builder, payload)
    builder.Finish(CommandBody.End(builder), file_identifier=b"THCB")
    return bytes(builder.Output())


def envelope(body_bytes, key):
    signature = key.sign(DOMAIN + body_bytes)
    builder = flatbuffers.Builder(len(body_bytes) + 128)
    bvec = builder.CreateByteVector(body_bytes)
    svec = builder.CreateByteVector(signature)
    Envelope.Start(builder)
    Envelope.AddBody(builder, bvec)
    Envelope.AddSignature(builder, svec)
    builder.Finish(Envelope.End(builder), file_identifier=b"THEV")
    return bytes(builder.Output())


def create_session(builder):
    name = builder.CreateString("from python")
    CreateSession.Start(builder)
    CreateSession.AddName(builder, name)
    return CreateSession.End(builder)


def create_entity(builder):
    name = builder.CreateString("python cube")
    CreateEntity.Start(builder)
    CreateEntity.AddShape(builder, 0)
    CreateEntity.AddName(builder, name)
    return CreateEntity.End(builder)


def set_transform(builder):
    SetTransform.Start(builder)
    SetTransform.AddTranslation(builder, Vec3.CreateVec3(builder, 1.0, 2.0, 3.0))
    SetTransform.AddRotation(builder, Quat.CreateQuat(builder, 0.0, 0.0, 0.0, 1.0))
    SetTransform.AddScale(builder, Vec3.CreateVec3(builder, 1.0, 1.0, 1.0))
    return SetTransform.End(builder)


TRANSFORM_ID = 0x72D836534314151E  # SipHash-2-4("theta.Transform"), docs/PROTOCOL.md


# --- Read credentials (docs/PROTOCOL.md, "Read credentials") ----------------------------
def credential(key, method, session, issued_ms=None, nonce=None):
    """The theta-auth metadata value for one call of `method` ("/theta.v1.X/Y") on `session`."""
    issued_ms = int(time.time() * 1000) if issued_ms is None else issued_ms
    nonce = os.urandom(16) if nonce is None else nonce
    message = (b"theta/read/v1\x00" + method.encode() + b"\x00" + (session or bytes(16)) +
               issued_ms.to_bytes(8, "big") + nonce)
    sig = key.sign(message)
    return f"v1.{raw_public(key).hex()}.{issued_ms}.{nonce.hex()}.{sig.hex()}"


def signed(key, method, session):
    return [("theta-auth", credential(key, method, session))]
key = Ed25519PrivateKey.generate()
session = os.urandom(16)
channel = grpc.insecure_channel(addr)
log = rpc.LogServiceStub(channel)
replay = rpc.ReplayServiceStub(channel)
audit = rpc.AuditServiceStub(channel)

sent = [
    envelope(body(session, key, 1, 101, 0, 0, Command.Command.CreateSession, create_session), key),
    envelope(body(session, key, 2, 102, 7, 0, Command.Command.CreateEntity, create_entity), key),
    envelope(body(session, key, 3, 103, 7, TRANSFORM_ID, Command.Command.SetTransform, set_transform), key),
]
r = log.CreateSession(pb.AppendRequest(envelope=sent[0]))
assert r.receipt.seq == 1, r
for i, env in enumerate(sent[1:], start=2):
    r = log.Append(pb.AppendRequest(envelope=env))
    assert r.receipt.seq == i, r
head = log.Head(pb.HeadRequest(session=session), metadata=signed(key, "/theta.v1.LogService/Head", session))
print("appended 3 commands; head", head.seq)

# Reads need a credential: none, a replayed one, one for another method, a stranger's.
def refused(call, code, **kw):
    try:
        call(**kw)
        raise SystemExit(f"{call} was answered without a valid credential")
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        assert e.details().startswith("auth_failures: "), e.details()

head_req = pb.HeadRequest(session=session)
refused(log.Head, grpc.StatusCode.UNAUTHENTICATED, request=head_req)
once = signed(key, "/theta.v1.LogService/Head", session)
log.Head(head_req, metadata=once)
refused(log.Head, grpc.StatusCode.UNAUTHENTICATED, request=head_req, metadata=once)
refused(log.Head, grpc.StatusCode.UNAUTHENTICATED, request=head_req,
        metadata=signed(key, "/theta.v1.ReplayService/ReadLog", session))
stranger = Ed25519PrivateKey.generate()
refused(log.Head, grpc.StatusCode.NOT_FOUND, request=head_req,
        metadata=signed(stranger, "/theta.v1.LogService/Head", session))
nowhere = os.urandom(16)
refused(log.Head, grpc.StatusCode.NOT_FOUND, request=pb.HeadRequest(session=nowhere),
        metadata=signed(key, "/theta.v1.LogService/Head", nowhere))
print("reads without a valid credential refused")

# A replay of the same envelope is refused with ALREADY_EXISTS.
try:
    log.Append(pb.AppendRequest(envelope=sent[2]))
    raise SystemExit("replay was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS, e

# --- Reading back and checking hashes --------------------------------------------------
entries = [e for batch in replay.ReadLog(pb.ReadLogRequest(session=session),
                                         metadata=signed(key, "/theta.v1.ReplayService/ReadLog", session))
           for e in batch.entries]
assert [e.seq for e in entries] == [1, 2, 3]
prev = bytes(32)
for e, env in zip(entries, sent):
    assert e.envelope == env, "envelope bytes come back unchanged"
    h = hashlib.sha256(b"theta/entry/v1\x00" + session + e.seq.to_bytes(8, "big") +
                       e.receipt_time_ms.to_bytes(8, "big") + prev + e.envelope).digest()
    assert h == e.entry_hash and e.prev_hash == prev, "entry hash per docs/PROTOCOL.md"
    prev = h
print("entries read back; entry hashes recomputed")


# --- RFC 6962 inclusion proof, checked independently (RFC 9162 section 2.1.3.2) -------
def node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def verify_inclusion(leaf, index, size, path, root):
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


for seq in (1, 2, 3):
    p = audit.InclusionProof(pb.InclusionProofRequest(session=session, seq=seq),
                             metadata=signed(key, "/theta.v1.AuditService/InclusionProof", session))
    leaf = hashlib.sha256(b"\x00" + entries[seq - 1].entry_hash).digest()
    assert leaf == p.leaf_hash
    assert verify_inclusion(leaf, p.leaf_index, p.tree_size, list(p.path), p.root), f"inclusion of {seq}"
# The root of the whole tree, computed here from the leaves (MTH of RFC 6962).
leaves = [hashlib.sha256(b"\x00" + e.entry_hash).digest() for e in entries]
root3 = node(node(leaves[0], leaves[1]), leaves[2])
sth = audit.SignedTreeHead(pb.SignedTreeHeadRequest(session=session),
                           metadata=signed(key, "/theta.v1.AuditService/SignedTreeHead", session))
assert root3 == sth.root
print("inclusion proofs verified independently; tree root matches")
print("python client: ok")
