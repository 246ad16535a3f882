"""API keys with roles and TLS (optionally mutual), against real `mvr serve` processes on loopback:
who is let in, who is refused with which code, and that health stays open."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mvr.client import Client, Document
from mvr.client.errors import PermissionDeniedError, UnauthenticatedError, UnavailableError
from mvr.server import auth
from mvr.server.app import Server, ServerConfig
from mvr.v1 import collection_service_pb2, document_service_pb2, search_service_pb2, snapshot_service_pb2
from mvr.v1 import document_service_pb2_grpc as dgrpc
from mvr.v1 import types_pb2 as tpb

from tests.conftest import REPO, RunningServer, start_server, stop_server, subprocess_env

KEYS = {
    "read": "r" * 8 + "-reader-key-1",
    "write": "w" * 8 + "-writer-key-1",
    "admin": "a" * 8 + "-admin-key-01",
}
DIM = 8


def write_keys(path: Path) -> Path:
    path.write_text("# role of each key\n\n" + "".join(f"{key} {role}\n" for role, key in KEYS.items()))
    return path


# ------------------------------------------------------------------------------------------ rules


def test_every_mvr_method_has_an_explicit_role() -> None:
    """A method added to the proto must be classified here, not fall to admin unnoticed."""
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in (collection_service_pb2, document_service_pb2, search_service_pb2, snapshot_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods == set(auth.REQUIRED_ROLES)
    assert auth.required_role("/grpc.health.v1.Health/Check") is None
    assert auth.required_role("/mvr.v1.SnapshotService/DownloadSnapshot") is auth.Role.ADMIN
    assert auth.required_role("/mvr.v1.FutureService/Method") is auth.Role.ADMIN  # unclassified: closed


def test_keys_file_is_parsed_and_bad_lines_are_named_without_the_key() -> None:
    keys = auth.ApiKeys.parse("# comment\n\n" + "".join(f"  {k}   {r.upper()}\n" for r, k in KEYS.items()))
    assert [keys.role_of(KEYS[r]) for r in ("read", "write", "admin")] == list(auth.Role)
    assert keys.role_of("not-a-key-at-all-xx") is None and keys.role_of("") is None
    secret = "s3cret-value-0123456789"
    for text, message in [
        (f"{secret} reader", "keys.txt:1: unknown role 'reader'"),
        (f"{secret}", "keys.txt:1: expected 'KEY ROLE', got 1 fields"),
        (f"# x\n{secret} read extra", "keys.txt:2: expected 'KEY ROLE', got 3 fields"),
        ("short read", "keys.txt:1: key has 5 characters; at least 16 needed"),
        (f"{secret} read\n{secret} admin", "keys.txt:2: the same key appears on an earlier line"),
        ("# only comments\n", "keys.txt: no keys"),
    ]:
        with pytest.raises(ValueError) as raised:
            auth.ApiKeys.parse(text, "keys.txt")
        assert str(raised.value).startswith(message) and secret not in str(raised.value)


def test_bearer_token_parsing() -> None:
    assert auth.bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert auth.bearer_token([("x", "y"), ("authorization", "bearer  abc ")]) == "abc"
    assert auth.bearer_token([("authorization", "Basic abc")]) is None
    assert auth.bearer_token([("authorization", "Bearer ")]) is None
    assert auth.bearer_token(None) is None


# ------------------------------------------------------------------------------------------ keys


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("keyed")
    keys = write_keys(root / "keys.txt")
    server = start_server(root / "data", "none", root / "server.log", "--api-keys-file", str(keys))
    yield server
    assert stop_server(server) == 0
    for key in KEYS.values():  # never logged
        assert key not in server.log()


def vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_roles_decide_what_each_key_may_call(keyed_server: RunningServer) -> None:
    target = keyed_server.target
    with (
        Client(target, api_key=KEYS["admin"]) as admin,
        Client(target, api_key=KEYS["write"]) as writer,
        Client(target, api_key=KEYS["read"]) as reader,
    ):
        admin.create_collection("roles", model=None, dim=DIM)
        with pytest.raises(
            PermissionDeniedError, match=r"role 'write' may not call .*CreateCollection.*'admin'"
        ):
            writer.create_collection("other", model=None, dim=DIM)
        writer.upsert("roles", [Document(f"d{i}", vectors=vectors(5, i)) for i in range(4)])
        with pytest.raises(PermissionDeniedError, match=r"role 'read' .*UpsertDocuments.*needs 'write'"):
            reader.upsert("roles", [Document("x", vectors=vectors(5, 9))])
        with pytest.raises(PermissionDeniedError, match="DeleteDocuments"):
            reader.delete("roles", ["d0"])
        hits = reader.search("roles", vectors(5, 2), top_k=2)
        assert hits[0].id == "d2"
        assert reader.get("roles", "d1").id == "d1"
        assert [c.name for c in reader.list_collections()] == ["roles"]
        with pytest.raises(PermissionDeniedError, match="DeleteCollection"):
            writer.delete_collection("roles")
        assert writer.delete("roles", ["d0"]).deleted == ["d0"]
        with pytest.raises(PermissionDeniedError, match=r"CreateSnapshot.*'admin'"):
            writer.create_snapshot("roles")
        with pytest.raises(PermissionDeniedError, match="ListSnapshots"):
            reader.list_snapshots("roles")
        assert admin.create_snapshot("roles").document_count == 3
        admin.delete_collection("roles")


def test_missing_or_unknown_keys_are_unauthenticated_and_health_stays_open(
    keyed_server: RunningServer,
) -> None:
    with (
        Client(keyed_server.target) as anonymous,
        pytest.raises(UnauthenticatedError, match="missing API key"),
    ):
        anonymous.list_collections()
    with Client(keyed_server.target, api_key="x" * 20) as stranger:
        with pytest.raises(UnauthenticatedError, match="unknown API key"):
            stranger.list_collections()
        assert stranger.health() == "SERVING"
    with grpc.insecure_channel(keyed_server.target) as channel:  # raw stub, no metadata at all
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_a_streaming_call_is_refused_with_its_code(keyed_server: RunningServer) -> None:
    """The refusal keeps the call's shape: a client stream is answered UNAUTHENTICATED or
    PERMISSION_DENIED, not a protocol error."""
    request = document_service_pb2.StreamUpsertDocumentsRequest(
        parent="collections/nowhere",
        documents=[
            document_service_pb2.Document(
                id="a",
                vectors=tpb.Vectors(dtype=tpb.DTYPE_FLOAT32, shape=[1, DIM], data=vectors(1, 0).tobytes()),
            )
        ],
    )
    with grpc.insecure_channel(keyed_server.target) as channel:
        stub = dgrpc.DocumentServiceStub(channel)
        for metadata, code in [
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", f"Bearer {KEYS['read']}"),), grpc.StatusCode.PERMISSION_DENIED),
        ]:
            with pytest.raises(grpc.RpcError) as raised:
                list(stub.StreamUpsertDocuments(iter([request]), metadata=metadata, timeout=10))
            assert raised.value.code() == code


NODE_LIST = """
const { connect, call } = require(process.argv[1]);
const [target, options] = [process.argv[2], JSON.parse(process.argv[3])];
const client = connect(target, options);
call(client.collections, 'listCollections', {}, 10000)
  .then((response) => { console.log('ok', response.collections.map((c) => c.name).join(',')); })
  .catch((error) => { console.log('code', error.code, error.details); })
  .finally(() => client.close());
"""


def node_list(target: str, options: dict) -> str:
    """ListCollections through the Node client (clients/node/mvr.js) with ``options``."""
    from tests.test_node_client import NODE_DIR

    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.skip("node or clients/node/node_modules missing (tests/test_node_client.py installs them)")
    done = subprocess.run(
        [node, "-e", NODE_LIST, str(NODE_DIR / "mvr.js"), target, json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_node_client_sends_its_key(keyed_server: RunningServer) -> None:
    assert node_list(keyed_server.target, {}).startswith("code 16 missing API key")  # UNAUTHENTICATED
    assert node_list(keyed_server.target, {"apiKey": KEYS["read"]}).startswith("ok")


def test_a_bad_keys_file_stops_the_server_at_start_naming_the_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("a-perfectly-long-key-000 read\nanother-long-key-00000 superuser\n")
    command = [sys.executable, "-m", "mvr.client.cli", "serve", "--model", "none", "--port", "0"]
    done = subprocess.run(
        [*command, "--data-dir", str(tmp_path / "d"), "--api-keys-file", str(keys), "--log-format", "text"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"{keys}:2: unknown role 'superuser'" in done.stderr
    assert "another-long-key" not in done.stderr


# ------------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from that CA; and a
    second CA that signed nothing the server trusts."""
    root = tmp_path_factory.mktemp("tls")
    ca, stranger_ca = trustme.CA(), trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client@example.org")
    stranger_cert = stranger_ca.issue_cert("client@example.org")
    files = {
        "ca": root / "ca.pem",
        "server_cert": root / "server.pem",
        "server_key": root / "server.key",
        "client_cert": root / "client.pem",
        "client_key": root / "client.key",
        "stranger_cert": root / "stranger.pem",
        "stranger_key": root / "stranger.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert.private_key_pem.write_to_path(str(files["server_key"]))
    server_cert.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    for cert, name in ((client_cert, "client"), (stranger_cert, "stranger")):
        cert.private_key_pem.write_to_path(str(files[f"{name}_key"]))
        cert.cert_chain_pems[0].write_to_path(str(files[f"{name}_cert"]))
    return files


def start_tls_server(
    tmp_path: Path, files: dict[str, Path], credentials: grpc.ChannelCredentials, *extra: str
) -> RunningServer:
    """`mvr serve --model none` with the fixture's server certificate, and ``extra`` flags; the start-up
    health check goes over TLS with ``credentials``."""
    flags = ["--tls-cert", str(files["server_cert"]), "--tls-key", str(files["server_key"]), *extra]
    return start_server(tmp_path / "data", "none", tmp_path / "server.log", *flags, credentials=credentials)


def test_mutual_tls_with_keys(tls_files: dict[str, Path], tmp_path: Path) -> None:
    files = tls_files
    keys = write_keys(tmp_path / "keys.txt")
    credentials = grpc.ssl_channel_credentials(
        files["ca"].read_bytes(), files["client_key"].read_bytes(), files["client_cert"].read_bytes()
    )
    server = start_tls_server(
        tmp_path, files, credentials, "--tls-client-ca", str(files["ca"]), "--api-keys-file", str(keys)
    )
    try:
        with Client(
            server.target,
            api_key=KEYS["admin"],
            root_certificates=files["ca"],
            certificate_chain=files["client_cert"],
            private_key=files["client_key"],
        ) as client:
            client.create_collection("secure", model=None, dim=DIM)
            assert [c.name for c in client.list_collections()] == ["secure"]
        refused = [
            Client(server.target, api_key=KEYS["admin"], timeout=5),  # plaintext to a TLS port
            Client(server.target, api_key=KEYS["admin"], root_certificates=files["ca"], timeout=5),  # no cert
            Client(  # a certificate from a CA the server does not trust
                server.target,
                api_key=KEYS["admin"],
                root_certificates=files["ca"],
                certificate_chain=files["stranger_cert"],
                private_key=files["stranger_key"],
                timeout=5,
            ),
        ]
        for client in refused:
            with client, pytest.raises(UnavailableError):
                client.list_collections()
        with (
            Client(  # TLS accepted, then the key decides
                server.target,
                root_certificates=files["ca"],
                certificate_chain=files["client_cert"],
                private_key=files["client_key"],
            ) as anonymous,
            pytest.raises(UnauthenticatedError),
        ):
            anonymous.list_collections()
    finally:
        assert stop_server(server) == 0


def test_tls_without_client_certificates_and_the_cli(tls_files: dict[str, Path], tmp_path: Path) -> None:
    files = tls_files
    server = start_tls_server(tmp_path, files, grpc.ssl_channel_credentials(files["ca"].read_bytes()))
    try:
        with Client(server.target, root_certificates=files["ca"].read_bytes()) as client:
            client.create_collection("plain-tls", model=None, dim=DIM)
        cli = [sys.executable, "-m", "mvr.client.cli", "collections", "list", "--target", server.target]
        listed = subprocess.run(
            [*cli, "--tls-ca", str(files["ca"])],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert "plain-tls" in listed.stdout
        assert node_list(server.target, {"rootCert": str(files["ca"])}) == "ok collections/plain-tls"
        assert node_list(server.target, {}).startswith("code 14")  # plaintext to a TLS port: UNAVAILABLE
        half = subprocess.run(
            [*cli, "--tls-ca", str(files["ca"]), "--tls-cert", str(files["client_cert"])],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=60,
        )
        assert half.returncode != 0
        assert "certificate_chain and private_key go together" in half.stderr
    finally:
        assert stop_server(server) == 0


def test_server_flags_that_do_not_go_together_are_refused(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "mvr.client.cli", "serve", "--model", "none", "--data-dir", str(tmp_path)]
    for extra, message in [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
    ]:
        done = subprocess.run(
            [*base, *extra], capture_output=True, text=True, env=subprocess_env(), timeout=60
        )
        assert done.returncode != 0 and message in done.stderr


def test_only_loopback_addresses_count_as_this_machine() -> None:
    """What decides the start-up warning for a server reachable without TLS or keys."""
    from mvr.server.app import _is_loopback

    assert all(_is_loopback(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(_is_loopback(host) for host in ("0.0.0.0", "::", "10.1.2.3", "search.example.org"))


@pytest.mark.parametrize(
    ("host", "secured", "warned"),
    [("127.0.0.1", False, False), ("0.0.0.0", False, True), ("0.0.0.0", True, False)],
)
def test_listening_beyond_loopback_without_tls_and_keys_is_warned(
    host: str,
    secured: bool,
    warned: bool,
    tls_files: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    security = (
        {
            "tls_cert": tls_files["server_cert"],
            "tls_key": tls_files["server_key"],
            "api_keys_file": write_keys(tmp_path / "keys.txt"),
        }
        if secured
        else {}
    )
    config = ServerConfig(host=host, port=0, data_dir=tmp_path / "data", model="none", **security)
    with caplog.at_level(logging.WARNING, logger="mvr.server"):
        server = Server(config)  # binds, but never started: no call is served
    server.grpc_server.stop(0)
    warnings = [r for r in caplog.records if "listening beyond this machine" in r.getMessage()]
    assert bool(warnings) == warned
