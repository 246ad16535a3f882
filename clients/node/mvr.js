// Loads the mvr.v1 services from the repository's proto/ directory at run time (no code generation)
// and provides the one helper every client needs: packing token vectors as little-endian float32.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const PROTO_FILES = ['collection_service.proto', 'document_service.proto', 'search_service.proto'].map(
  (f) => `mvr/v1/${f}`,
);

// proto-loader options, chosen so that messages look like the proto:
// - keepCase: false  → fields are lowerCamelCase in JS (top_k → topK), as the proto3 JSON mapping.
// - longs: String    → uint64 fields (stats counters, seed) arrive as decimal strings: no precision loss.
// - enums: String    → enum fields arrive as their names ('DTYPE_FLOAT32'); send names too.
// - defaults: true   → unset scalar fields are present with their zero value.
// - oneofs: true     → a oneof's virtual field names the member set (query.kind === 'vectors').
// The google/protobuf/*.proto imports are resolved from the copies bundled with protobufjs.
const LOADER_OPTIONS = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_ROOT] };

function loadMvr() {
  const definition = protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition).mvr.v1;
}

// PEM given as a Buffer, or read from a file path.
function pem(source) {
  return source === undefined || Buffer.isBuffer(source) ? source : fs.readFileSync(source);
}

// Connects the three mvr.v1 services to `target` ('host:port').
// options (all optional):
// - apiKey: sent as 'authorization: Bearer <apiKey>' on every call (servers with --api-keys-file).
// - rootCert: PEM (Buffer or path) of the CA of the server's certificate: connect with TLS.
// - tls: true to connect with TLS trusting the system's roots (implied by rootCert / certChain).
// - certChain + privateKey: PEM (Buffers or paths) of a client certificate (mutual TLS).
// Without rootCert, tls or certChain the connection is plaintext.
function connect(target, options = {}) {
  const mvr = loadMvr();
  const { apiKey, rootCert, certChain, privateKey, tls } = options;
  if ((certChain === undefined) !== (privateKey === undefined)) {
    throw new Error('certChain and privateKey go together: give both or neither');
  }
  const credentials =
    tls || rootCert !== undefined || certChain !== undefined
      ? grpc.credentials.createSsl(pem(rootCert) ?? null, pem(privateKey) ?? null, pem(certChain) ?? null)
      : grpc.credentials.createInsecure();
  // an interceptor rather than call credentials: grpc-js attaches call credentials only to TLS channels
  const addKey = (callOptions, nextCall) =>
    new grpc.InterceptingCall(nextCall(callOptions), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${apiKey}`);
        next(metadata, listener);
      },
    });
  const stubOptions = apiKey ? { interceptors: [addKey] } : {};
  return {
    collections: new mvr.CollectionService(target, credentials, stubOptions),
    documents: new mvr.DocumentService(target, credentials, stubOptions),
    search: new mvr.SearchService(target, credentials, stubOptions),
    close() {
      for (const stub of [this.collections, this.documents, this.search]) stub.close();
    },
  };
}

// rows: array of equal-length number arrays → a mvr.v1.Vectors message (packed float32, little-endian).
function packVectors(rows) {
  const n = rows.length;
  const dim = n ? rows[0].length : 0;
  const buffer = Buffer.alloc(n * dim * 4);
  rows.forEach((row, i) => {
    if (row.length !== dim) throw new Error(`row ${i} has ${row.length} values, expected ${dim}`);
    row.forEach((value, j) => buffer.writeFloatLE(value, (i * dim + j) * 4));
  });
  return { dtype: 'DTYPE_FLOAT32', shape: [n, dim], data: buffer };
}

// A mvr.v1.Vectors message (float32 or float16) → array of number arrays.
function unpackVectors(vectors) {
  const [n, dim] = vectors.shape.map(Number);
  const data = vectors.data;
  const rows = [];
  for (let i = 0; i < n; i++) {
    const row = [];
    for (let j = 0; j < dim; j++) {
      const k = i * dim + j;
      row.push(vectors.dtype === 'DTYPE_FLOAT16' ? halfToFloat(data.readUInt16LE(k * 2)) : data.readFloatLE(k * 4));
    }
    rows.push(row);
  }
  return rows;
}

function halfToFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

// Promisified unary call with a deadline (every call should carry one).
function call(stub, method, request, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: new Date(Date.now() + timeoutMs) }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

module.exports = { connect, packVectors, unpackVectors, call, grpc, LOADER_OPTIONS };
