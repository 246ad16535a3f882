#!/usr/bin/env node
// An mvr.v1 client in Node.js, end to end: create collections, upsert documents with precomputed
// vectors and with text, search, read the per-token explanation, and handle INVALID_ARGUMENT.
//
//   node clients/node/example.js HOST:PORT [--model MODEL]
//
// --model is the encoder of the text collection ('default' = the server's embedded model, or a model
// directory on the server). Every step checks what the API documents; the exit code is 0 only when
// all of them held.
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { connect, packVectors, unpackVectors, call, grpc } = require('./mvr');

const DIM = 8;

function parseArgs(argv) {
  const args = { target: argv[0], model: 'default' };
  for (let i = 1; i < argv.length; i++) {
    if (argv[i] === '--model') args.model = argv[++i];
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!args.target) throw new Error('usage: node example.js HOST:PORT [--model MODEL]');
  return args;
}

// A seeded generator, so that runs are repeatable.
function rng(seed) {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32 - 0.5;
  };
}

function unitRows(random, n, dim = DIM) {
  return Array.from({ length: n }, () => {
    const row = Array.from({ length: dim }, random);
    const norm = Math.hypot(...row);
    return row.map((x) => x / norm);
  });
}

function chamfer(query, doc) {
  return query.reduce((sum, q) => sum + Math.max(...doc.map((d) => d.reduce((s, x, j) => s + x * q[j], 0))), 0);
}

async function step(name, body) {
  await body();
  console.log(`ok   ${name}`);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const client = connect(args.target);
  const suffix = crypto.randomBytes(4).toString('hex');
  const vectorsName = `collections/node-vectors-${suffix}`;
  const textName = `collections/node-text-${suffix}`;
  const random = rng(42);
  const docs = Array.from({ length: 20 }, (_, i) => ({ id: `doc-${i}`, rows: unitRows(random, 3 + (i % 5)) }));

  try {
    await step('create a collection of precomputed vectors', async () => {
      const { collection } = await call(client.collections, 'CreateCollection', {
        collectionId: vectorsName.split('/')[1],
        collection: { dim: DIM, storageDtype: 'DTYPE_FLOAT32' },
      });
      assert.equal(collection.name, vectorsName);
      assert.equal(collection.dim, DIM);
      assert.ok(collection.fde.outputDim > 0, 'defaults are echoed back');
    });

    await step('upsert documents as packed float32 vectors', async () => {
      const { statuses } = await call(client.documents, 'UpsertDocuments', {
        parent: vectorsName,
        documents: docs.map((d, i) => ({ id: d.id, vectors: packVectors(d.rows), metadata: { parity: String(i % 2) } })),
      });
      assert.deepEqual(
        statuses.map((s) => s.code),
        docs.map(() => 'DOCUMENT_STATUS_CODE_CREATED'),
      );
    });

    await step('search with vectors, read the per-token explanation', async () => {
      const query = docs[7].rows.slice(0, 2);
      const { hits, queryTokenCount } = await call(client.search, 'Search', {
        collection: vectorsName,
        query: { vectors: packVectors(query) },
        topK: 3,
        explain: true,
      });
      const expected = [...docs].sort((a, b) => chamfer(query, b.rows) - chamfer(query, a.rows)).slice(0, 3);
      assert.deepEqual(
        hits.map((h) => h.id),
        expected.map((d) => d.id),
      );
      assert.equal(hits[0].id, 'doc-7');
      assert.equal(queryTokenCount, 2);
      for (const hit of hits) {
        assert.equal(hit.explanation.length, query.length, 'one match per query token');
        const sum = hit.explanation.reduce((s, m) => s + m.score, 0);
        assert.ok(Math.abs(sum - hit.score) < 1e-3, `explanation sums to the score (${sum} vs ${hit.score})`);
        assert.ok(Math.abs(hit.score - chamfer(query, docs.find((d) => d.id === hit.id).rows)) < 1e-3);
      }
    });

    await step('metadata filter still returns top_k', async () => {
      const { hits } = await call(client.search, 'Search', {
        collection: vectorsName,
        query: { vectors: packVectors(docs[7].rows) },
        topK: 5,
        filter: { parity: '0' },
      });
      assert.equal(hits.length, 5);
      assert.ok(hits.every((h) => h.metadata.parity === '0'));
    });

    await step('read a document back with its vectors', async () => {
      const { document } = await call(client.documents, 'GetDocument', {
        name: `${vectorsName}/documents/doc-3`,
        includeVectors: true,
      });
      const rows = unpackVectors(document.vectors);
      assert.equal(rows.length, docs[3].rows.length);
      rows.forEach((row, i) => row.forEach((x, j) => assert.ok(Math.abs(x - docs[3].rows[i][j]) < 1e-6)));
    });

    await step('INVALID_ARGUMENT names the field and the value', async () => {
      await assert.rejects(
        call(client.search, 'Search', { collection: vectorsName, query: { vectors: packVectors(docs[0].rows) }, topK: 5000 }),
        (error) => {
          assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
          assert.match(error.details, /top_k/);
          assert.match(error.details, /5000/);
          return true;
        },
      );
      const bad = packVectors([[NaN, ...Array(DIM - 1).fill(0)]]);
      await assert.rejects(
        call(client.documents, 'UpsertDocuments', { parent: vectorsName, documents: [{ id: 'nan', vectors: bad }] }),
        (error) => error.code === grpc.status.INVALID_ARGUMENT && /documents\[0\]\.vectors/.test(error.details),
      );
    });

    await step(`text collection (model ${args.model}): upsert text, search text`, async () => {
      const { collection } = await call(
        client.collections,
        'CreateCollection',
        { collectionId: textName.split('/')[1], collection: { encoder: { model: args.model } } },
        300000,
      );
      assert.ok(collection.dim > 0 && collection.encoder.weightsSha256.length === 64);
      const texts = {
        cats: 'the cat sat on the mat with another cat',
        stocks: 'market prices fell as investors sold stocks',
        rain: 'heavy rain and wind are expected tomorrow',
      };
      await call(
        client.documents,
        'UpsertDocuments',
        { parent: textName, documents: Object.entries(texts).map(([id, text]) => ({ id, text })) },
        120000,
      );
      const { hits } = await call(client.search, 'Search', {
        collection: textName,
        query: { text: texts.rain },
        topK: 3,
        explain: true,
      });
      assert.equal(hits[0].id, 'rain');
      const { results } = await call(client.search, 'Encode', {
        texts: ['investors sold stocks'],
        kind: 'ENCODE_KIND_DOCUMENT',
        collection: textName,
      });
      for (const row of unpackVectors(results[0].vectors)) {
        assert.ok(Math.abs(Math.hypot(...row) - 1) < 1e-4, 'token vectors are L2-normalised');
      }
    });
  } finally {
    for (const name of [vectorsName, textName]) {
      await call(client.collections, 'DeleteCollection', { name }).catch((error) => {
        if (error.code !== grpc.status.NOT_FOUND) throw error;
      });
    }
    client.close();
  }
  console.log('all steps passed');
}

main().catch((error) => {
  console.error(`FAILED: ${error.stack || error}`);
  process.exit(1);
});
