// An mvr.v1 client in TypeScript, generated from proto/mvr/v1 by protoc + ts-proto (src/gen), end to end
// against a running server: create a collection, upsert precomputed vectors, stream an upsert, search
// with a filter, read a document back, list with pagination, delete, and read the codes and field
// violations of errors from the status details. Every step checks what the API documents; the exit code
// is 0 only when all of them held.
//
//   npm ci && npm run build && node dist/example.js HOST:PORT      (in clients/ts)
//
// Requests are built with Message.fromPartial({...}): a field the API adds later then never breaks
// this code (ts-proto's message types list every field).

import { credentials, Metadata, ServiceError, status } from "@grpc/grpc-js";

import { BadRequest } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";
import {
  CollectionServiceClient,
  CreateCollectionRequest,
  DeleteCollectionRequest,
  GetCollectionRequest,
} from "./gen/mvr/v1/collection_service";
import {
  DeleteDocumentsRequest,
  Document,
  DocumentServiceClient,
  DocumentStatusCode,
  GetDocumentRequest,
  ListDocumentsRequest,
  UpsertDocumentsRequest,
  StreamUpsertDocumentsRequest,
  StreamUpsertDocumentsResponse,
} from "./gen/mvr/v1/document_service";
import { SearchRequest, SearchServiceClient } from "./gen/mvr/v1/search_service";
import { DType, Vectors } from "./gen/mvr/v1/types";

const DIM = 8;
let failures = 0;

function check(ok: boolean, what: string): void {
  if (!ok) failures++;
  console.log(`${ok ? "ok  " : "FAIL"}  ${what}`);
}

// A seeded generator, so that runs are repeatable.
function rng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32 - 0.5;
  };
}

function unitRows(random: () => number, n: number, dim = DIM): number[][] {
  return Array.from({ length: n }, () => {
    const row = Array.from({ length: dim }, random);
    const norm = Math.hypot(...row);
    return row.map((x) => x / norm);
  });
}

// Rows → mvr.v1.Vectors: float32, row-major, little-endian.
function pack(rows: number[][]): Vectors {
  const data = Buffer.alloc(rows.length * rows[0].length * 4);
  rows.flat().forEach((x, i) => data.writeFloatLE(x, 4 * i));
  return { dtype: DType.DTYPE_FLOAT32, shape: [rows.length, rows[0].length], data };
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (mantissa / 1024);
  if (exponent === 31) return mantissa ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + mantissa / 1024);
}

function unpack(vectors: Vectors): number[][] {
  const [n, dim] = vectors.shape;
  const half = vectors.dtype === DType.DTYPE_FLOAT16;
  return Array.from({ length: n }, (_, i) =>
    Array.from({ length: dim }, (_, j) =>
      half ? halfToFloat(vectors.data.readUInt16LE(2 * (i * dim + j))) : vectors.data.readFloatLE(4 * (i * dim + j)),
    ),
  );
}

// A unary call of a generated grpc-js client as a promise, with a deadline.
type Unary<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: { deadline: Date },
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

function call<Req, Res>(method: Unary<Req, Res>, self: object, request: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 60_000);
    method.call(self, request, new Metadata(), { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

async function failure<T>(promise: Promise<T>): Promise<ServiceError> {
  try {
    await promise;
  } catch (error) {
    return error as ServiceError;
  }
  throw new Error("the call succeeded; an error was expected");
}

// The first BadRequest field violation in an error's google.rpc.Status details, if any.
function fieldViolation(error: ServiceError): string | undefined {
  const raw = error.metadata.get("grpc-status-details-bin")[0];
  if (raw === undefined) return undefined;
  const details = Status.decode(Buffer.from(raw as Buffer)).details;
  const badRequest = details.find((any) => any.typeUrl === "type.googleapis.com/google.rpc.BadRequest");
  return badRequest ? BadRequest.decode(badRequest.value).fieldViolations[0]?.field : undefined;
}

function streamUpsert(
  client: DocumentServiceClient,
  batches: StreamUpsertDocumentsRequest[],
): Promise<StreamUpsertDocumentsResponse[]> {
  return new Promise((resolve, reject) => {
    const acks: StreamUpsertDocumentsResponse[] = [];
    const stream = client.streamUpsertDocuments({ deadline: new Date(Date.now() + 60_000) });
    stream.on("data", (ack: StreamUpsertDocumentsResponse) => acks.push(ack));
    stream.on("error", reject);
    stream.on("end", () => resolve(acks));
    batches.forEach((batch) => stream.write(batch));
    stream.end();
  });
}

async function main(target: string): Promise<void> {
  const insecure = credentials.createInsecure();
  const collections = new CollectionServiceClient(target, insecure);
  const documents = new DocumentServiceClient(target, insecure);
  const search = new SearchServiceClient(target, insecure);

  // 1. a collection of precomputed 8-d vectors (no encoder model)
  const id = `ts-example-${Date.now()}`;
  const parent = `collections/${id}`;
  const created = await call(
    collections.createCollection,
    collections,
    CreateCollectionRequest.fromPartial({ collectionId: id, collection: { dim: DIM } }),
  );
  check(created.collection?.name === parent && created.collection.dim === DIM, `created ${parent}`);

  // 2. upsert 20 documents in one atomic batch, with metadata
  const random = rng(7);
  const written = new Map<string, number[][]>();
  const batch: Document[] = [];
  for (let i = 0; i < 20; i++) {
    const docId = `d${String(i).padStart(2, "0")}`;
    written.set(docId, unitRows(random, 4 + (i % 5)));
    batch.push(
      Document.fromPartial({
        id: docId,
        vectors: pack(written.get(docId)!),
        metadata: { parity: i % 2 === 0 ? "even" : "odd" },
      }),
    );
  }
  const upserted = await call(documents.upsertDocuments, documents, UpsertDocumentsRequest.fromPartial({ parent, documents: batch }));
  check(
    upserted.statuses.length === 20 &&
      upserted.statuses.every((s) => s.code === DocumentStatusCode.DOCUMENT_STATUS_CODE_CREATED),
    "UpsertDocuments: 20 statuses, all CREATED",
  );

  // 3. stream two more batches; each is acknowledged in order once durable
  const streamed = [0, 1].map((b) => ({
    parent,
    documents: [0, 1, 2, 3, 4].map((i) => {
      const docId = `s${b}-${i}`;
      written.set(docId, unitRows(random, 3));
      return Document.fromPartial({ id: docId, vectors: pack(written.get(docId)!), metadata: { parity: "streamed" } });
    }),
  }));
  const acks = await streamUpsert(documents, streamed);
  check(
    acks.length === 2 && acks.every((ack, i) => ack.ok && ack.batchIndex === i && ack.statuses.length === 5),
    `StreamUpsertDocuments: ${acks.length} batches acknowledged in order`,
  );

  // 4. search with document d04's own vectors, filtered to even documents
  const found = await call(
    search.search,
    search,
    SearchRequest.fromPartial({
      collection: parent,
      query: { vectors: pack(written.get("d04")!) },
      topK: 5,
      filter: { parity: "even" },
    }),
  );
  check(found.hits[0]?.id === "d04", `Search: top hit ${found.hits[0]?.id} (score ${found.hits[0]?.score.toFixed(4)})`);
  check(
    found.hits.length === 5 && found.hits.every((hit) => hit.metadata.parity === "even"),
    `Search: the filter kept only parity=even among ${found.hits.length} hits`,
  );

  // 5. read a document back with its vectors (stored as float16 by default)
  const got = await call(documents.getDocument, documents, GetDocumentRequest.fromPartial({ name: `${parent}/documents/d07`, includeVectors: true }));
  const rows = unpack(got.document!.vectors!);
  const maxError = Math.max(...rows.flatMap((row, i) => row.map((x, j) => Math.abs(x - written.get("d07")![i][j]))));
  check(
    got.document?.id === "d07" && rows.length === written.get("d07")!.length && maxError < 1e-3,
    `GetDocument: ${rows.length} tokens back, largest difference ${maxError.toExponential(1)}`,
  );

  // 6. list every document, 7 a page
  const listed: string[] = [];
  let pages = 0;
  let pageToken = "";
  do {
    const page = await call(documents.listDocuments, documents, ListDocumentsRequest.fromPartial({ parent, pageSize: 7, pageToken }));
    pages++;
    listed.push(...page.documents.map((d) => d.id));
    pageToken = page.nextPageToken;
  } while (pageToken);
  const sorted = [...listed].sort();
  check(
    listed.length === 30 && pages === 5 && listed.every((x, i) => x === sorted[i]),
    `ListDocuments: ${listed.length} ids in ${pages} pages, in order`,
  );

  // 7. delete one document and one that does not exist
  const deleted = await call(documents.deleteDocuments, documents, DeleteDocumentsRequest.fromPartial({ parent, ids: ["d00", "missing"] }));
  check(
    deleted.deletedIds.join() === "d00" && deleted.notFoundIds.join() === "missing",
    `DeleteDocuments: deleted ${deleted.deletedIds}, not found ${deleted.notFoundIds}`,
  );
  const gone = await failure(call(documents.getDocument, documents, GetDocumentRequest.fromPartial({ name: `${parent}/documents/d00` })));
  check(gone.code === status.NOT_FOUND, `GetDocument of the deleted document: ${status[gone.code]}`);

  // 8. errors: a malformed vector is INVALID_ARGUMENT with a BadRequest field violation in the status
  // details; vectors of another dimension than the collection's are FAILED_PRECONDITION (well formed,
  // but not for this collection)
  const malformed = pack(unitRows(random, 2));
  malformed.data = malformed.data.subarray(0, malformed.data.length - 4);
  const invalid = await failure(
    call(documents.upsertDocuments, documents, UpsertDocumentsRequest.fromPartial({ parent, documents: [Document.fromPartial({ id: "bad", vectors: malformed })] })),
  );
  const field = fieldViolation(invalid);
  check(
    invalid.code === status.INVALID_ARGUMENT && field === "documents[0].vectors.data",
    `malformed vector: ${status[invalid.code]}, field violation ${JSON.stringify(field)}`,
  );
  const wrongDim: Vectors = { dtype: DType.DTYPE_FLOAT32, shape: [1, DIM - 1], data: Buffer.alloc(4 * (DIM - 1)) };
  const precondition = await failure(
    call(search.search, search, SearchRequest.fromPartial({ collection: parent, query: { vectors: wrongDim }, topK: 3 })),
  );
  check(
    precondition.code === status.FAILED_PRECONDITION,
    `a ${DIM - 1}-d query against a ${DIM}-d collection: ${status[precondition.code]} (${precondition.details})`,
  );

  // 9. clean up
  await call(collections.deleteCollection, collections, DeleteCollectionRequest.fromPartial({ name: parent }));
  const afterDelete = await failure(call(collections.getCollection, collections, GetCollectionRequest.fromPartial({ name: parent })));
  check(afterDelete.code === status.NOT_FOUND, `GetCollection after DeleteCollection: ${status[afterDelete.code]}`);

  [collections, documents, search].forEach((client) => client.close());
  if (failures) {
    console.log(`${failures} checks failed`);
    process.exit(1);
  }
  console.log("all checks passed");
}

const target = process.argv[2];
if (!target) {
  console.error("usage: node dist/example.js HOST:PORT");
  process.exit(2);
}
main(target).catch((error: unknown) => {
  console.error("FAILED:", error);
  process.exit(1);
});
