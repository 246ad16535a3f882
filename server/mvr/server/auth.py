"""Who may call what: API keys with roles, checked on every call, and the TLS credentials of the port.

Owns the access rules of the server (nothing below the service layer knows about them):

- **API keys** (optional, ``mvr serve --api-keys-file FILE``): one ``KEY ROLE`` a line, ``#`` comments
  and blank lines ignored. Clients send ``authorization: Bearer KEY``. A missing or unknown key is
  UNAUTHENTICATED; a known key whose role lacks the right is PERMISSION_DENIED. Roles are ordered,
  each with the rights of the one before it: ``read`` (Search, BatchSearch, Encode, GetCollection,
  ListCollections, GetDocument, ListDocuments), ``write`` (+ UpsertDocuments, StreamUpsertDocuments,
  DeleteDocuments), ``admin`` (+ CreateCollection, DeleteCollection, every SnapshotService method, and
  any mvr.v1 method not listed here: a method a later version adds is closed until it is classified).
  The health and reflection services stay open: orchestrators probe health without a key, and
  reflection describes only the public contract.
- Keys are held as SHA-256 digests and a presented key is compared with every one of them in constant
  time (``hmac.compare_digest``, no early exit), so neither the time of a refusal nor a memory dump
  tells a key; no key is ever logged (file errors name the line, not its content).
- **TLS** (optional, ``--tls-cert`` + ``--tls-key``, and ``--tls-client-ca`` to require client
  certificates signed by that CA): :func:`server_credentials`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import grpc


class Role(IntEnum):
    """What a key may do; a larger role includes every right of the smaller ones."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

REQUIRED_ROLES: dict[str, Role] = {
    "/mvr.v1.SearchService/Search": Role.READ,
    "/mvr.v1.SearchService/BatchSearch": Role.READ,
    "/mvr.v1.SearchService/Encode": Role.READ,
    "/mvr.v1.CollectionService/GetCollection": Role.READ,
    "/mvr.v1.CollectionService/ListCollections": Role.READ,
    "/mvr.v1.DocumentService/GetDocument": Role.READ,
    "/mvr.v1.DocumentService/ListDocuments": Role.READ,
    "/mvr.v1.DocumentService/UpsertDocuments": Role.WRITE,
    "/mvr.v1.DocumentService/StreamUpsertDocuments": Role.WRITE,
    "/mvr.v1.DocumentService/DeleteDocuments": Role.WRITE,
    "/mvr.v1.CollectionService/CreateCollection": Role.ADMIN,
    "/mvr.v1.CollectionService/DeleteCollection": Role.ADMIN,
    # a snapshot holds every document: downloading one is reading the whole collection at once
    "/mvr.v1.SnapshotService/CreateSnapshot": Role.ADMIN,
    "/mvr.v1.SnapshotService/ListSnapshots": Role.ADMIN,
    "/mvr.v1.SnapshotService/DownloadSnapshot": Role.ADMIN,
    "/mvr.v1.SnapshotService/RestoreSnapshot": Role.ADMIN,
    "/mvr.v1.SnapshotService/DeleteSnapshot": Role.ADMIN,
}


def required_role(method: str) -> Role | None:
    """The role ``method`` (``/package.Service/Method``) needs; None for the open services."""
    service = method.lstrip("/").split("/", 1)[0]
    if service in OPEN_SERVICES:
        return None
    return REQUIRED_ROLES.get(method, Role.ADMIN)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The keys a server accepts (as digests) and the role of each."""

    entries: tuple[tuple[bytes, Role], ...]

    @classmethod
    def parse(cls, text: str, source: str = "api keys") -> ApiKeys:
        """``KEY ROLE`` lines; a malformed line raises ValueError naming ``source`` and the line number
        (never the key)."""
        entries: list[tuple[bytes, Role]] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{source}:{number}: expected 'KEY ROLE', got {len(fields)} fields")
            key, role_name = fields
            role = Role.__members__.get(role_name.upper())
            if role is None:
                raise ValueError(f"{source}:{number}: unknown role {role_name!r}; roles: read, write, admin")
            if len(key) < 16:
                raise ValueError(f"{source}:{number}: key has {len(key)} characters; at least 16 needed")
            digest = _digest(key)
            if any(hmac.compare_digest(digest, known) for known, _ in entries):
                raise ValueError(f"{source}:{number}: the same key appears on an earlier line")
            entries.append((digest, role))
        if not entries:
            raise ValueError(f"{source}: no keys (expected 'KEY ROLE' lines)")
        return cls(tuple(entries))

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        return cls.parse(path.read_text(), str(path))

    def role_of(self, presented: str) -> Role | None:
        """The role of ``presented``, or None. Compares with every key (no early exit)."""
        digest = _digest(presented)
        found = None
        for known, role in self.entries:
            if hmac.compare_digest(digest, known):
                found = role
        return found


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer TOKEN`` header, if there is one."""
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a key whose role covers the method; see the module docstring."""

    def __init__(self, keys: ApiKeys) -> None:
        self._keys = keys

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        required = required_role(details.method)
        if required is None:
            return continuation(details)
        token = bearer_token(details.invocation_metadata)
        role = None if token is None else self._keys.role_of(token)
        if role is None:
            why = "unknown API key" if token is not None else "missing API key"
            return _refusal(
                continuation(details),
                grpc.StatusCode.UNAUTHENTICATED,
                f"{why}: send the metadata 'authorization: Bearer <key>'",
            )
        if role < required:
            return _refusal(
                continuation(details),
                grpc.StatusCode.PERMISSION_DENIED,
                f"the key's role '{role.label}' may not call {details.method}; it needs '{required.label}'",
            )
        return continuation(details)


def _refusal(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler | None:
    """A handler of the same shape as ``handler`` (the stream flags decide how gRPC reads the call)
    that ends the call with ``code``; None (UNIMPLEMENTED) for a method the server does not have."""
    if handler is None:
        return None

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    shape = (handler.request_streaming, handler.response_streaming)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[shape]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS with the server's PEM certificate chain and private key; with ``client_ca``, clients must
    present a certificate signed by it (mutual TLS)."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=None if client_ca is None else client_ca.read_bytes(),
        require_client_auth=client_ca is not None,
    )
