#!/usr/bin/env node
// Query an esdistill deploy from Node.js, as an application does on any Elastic license or on OpenSearch:
// encode the query with the exported student (ONNX Runtime + the student's own tokenizer.json),
// then send a kNN request — or BM25 and kNN in one _msearch, fused by reciprocal rank fusion here.
// The engine's own client speaks to the cluster: @elastic/elasticsearch, or @opensearch-project/opensearch when the
// manifest's engine is "opensearch" (its kNN request, written by esdistill, is the engine's own form).
//
//   esdistill export --onnx -c my.toml          # writes the encoder folder and prints its path
//   npm ci && node search.mjs --encoder <folder> "my query"
//
// The encoder refuses to run against an alias that serves another deploy: the manifest's deploy_key must equal
// the _meta.esdistill.key of the index behind the alias (vectors of another model give wrong, plausible hits),
// checked at start — and every kNN hit's _index must be the manifest's index, so an alias moved while the process
// runs (a deploy, a rollback) stops it too (exit 3).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { Client as ElasticsearchClient } from "@elastic/elasticsearch";
import { Client as OpenSearchClient } from "@opensearch-project/opensearch";
import * as ort from "onnxruntime-node";
import { Tokenizer } from "tokenizers";

/** The exported query encoder: tokenizer.json + ONNX graph (token ids in, the normalised vector out). */
export class QueryEncoder {
  static async load(folder, { int8 = false, threads = 1 } = {}) {
    const manifest = JSON.parse(readFileSync(join(folder, "manifest.json"), "utf8"));
    if (manifest.format !== "esdistill.query-encoder/1") {
      throw new Error(`${folder}/manifest.json is not an esdistill query encoder (format ${manifest.format})`);
    }
    const tokenizer = Tokenizer.fromFile(join(folder, "tokenizer.json"));
    const session = await ort.InferenceSession.create(join(folder, int8 ? "model_int8.onnx" : "model.onnx"), {
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
    });
    return new QueryEncoder(manifest, tokenizer, session);
  }

  constructor(manifest, tokenizer, session) {
    this.manifest = manifest;
    this.tokenizer = tokenizer;
    this.session = session;
  }

  /** The query's vector, exactly as the Python student computes it (the manifest says how the text is prepared). */
  async encode(text) {
    const m = this.manifest;
    const enc = await this.tokenizer.encode(m.prefix + (m.lowercase ? text.toLowerCase() : text));
    const arrays = { input_ids: enc.getIds(), attention_mask: enc.getAttentionMask(), token_type_ids: enc.getTypeIds() };
    const feeds = {};
    for (const name of m.inputs) {
      const values = arrays[name];
      feeds[name] = new ort.Tensor("int64", BigInt64Array.from(values, (v) => BigInt(v)), [1, values.length]);
    }
    const out = await this.session.run(feeds);
    return Array.from(out[m.output].data);
  }
}

/**
 * The three requests a client sends, over the engine's own client library: Elasticsearch's answers are the response
 * body, OpenSearch's client wraps it in { body } and takes the request body as `body`.
 */
export class Engine {
  constructor(kind, client) {
    this.kind = kind;
    this.client = client;
  }

  async search(index, body) {
    if (this.kind === "opensearch") return (await this.client.search({ index, body })).body;
    return this.client.search({ index, ...body });
  }

  /** searches: [header, body, header, body, ...] as _msearch takes them. */
  async msearch(searches) {
    if (this.kind === "opensearch") return (await this.client.msearch({ body: searches })).body;
    return this.client.msearch({ searches });
  }

  async getMapping(index) {
    if (this.kind === "opensearch") return (await this.client.indices.getMapping({ index })).body;
    return this.client.indices.getMapping({ index });
  }

  close() {
    return this.client.close();
  }
}

/** Refuse an encoder whose deploy is not the one the alias serves. */
export async function checkServedDeploy(engine, manifest) {
  const mappings = await engine.getMapping(manifest.alias);
  const served = Object.entries(mappings).map(([index, m]) => [index, m.mappings?._meta?.esdistill?.key]);
  const wrong = served.filter(([, key]) => key !== manifest.deploy_key);
  if (served.length === 0 || wrong.length > 0) {
    const what = served.map(([index, key]) => `${index} (deploy ${key ?? "none"})`).join(", ");
    throw new MismatchError(
      `this encoder belongs to deploy ${manifest.deploy_key} (${manifest.index}), but alias ${manifest.alias} ` +
        `serves ${what || "nothing"}: export the encoder of the served deploy (esdistill export --onnx)`,
    );
  }
}

export class MismatchError extends Error {}

/** A manifest's request template with each placeholder ("{{query}}", "{{vector}}") replaced by its value. */
export function fill(node, values) {
  if (typeof node === "string" && Object.hasOwn(values, node)) return values[node];
  if (Array.isArray(node)) return node.map((n) => fill(n, values));
  if (node && typeof node === "object") {
    return Object.fromEntries(Object.entries(node).map(([key, v]) => [key, fill(v, values)]));
  }
  return node;
}

export function knnBody(manifest, vector) {
  // the kNN request as esdistill sends it (the engine's own form), the vector put where "{{vector}}" stands;
  // an encoder exported before manifests carried it: Elasticsearch's top-level knn
  if (manifest.knn_request) return fill(manifest.knn_request, { "{{vector}}": vector });
  const { k, num_candidates } = manifest.knn;
  return {
    knn: { field: manifest.vector_field, query_vector: vector, k, num_candidates: Math.max(num_candidates, k) },
    size: k,
    _source: false,
  };
}

export function bm25Body(manifest, text) {
  // the manifest's BM25 query with the text put where "{{query}}" stands
  return { query: fill(manifest.hybrid.bm25_query, { "{{query}}": text }), size: manifest.knn.k, _source: false,
    track_total_hits: false };
}

/** Reciprocal rank fusion: score(d) = sum over rankings of 1 / (rrfK + rank), ties broken by id. */
export function rrf(rankings, rrfK, size) {
  const scores = new Map();
  for (const ranking of rankings) {
    ranking.forEach((id, i) => scores.set(id, (scores.get(id) ?? 0) + 1 / (rrfK + i + 1)));
  }
  return [...scores.entries()]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .slice(0, size);
}

/** Min-max fusion, as esdistill's hybrid (esdistill/search.py minmax): each ranking's scores min-max normalised
 * over its own hits (a document it did not return adds 0; hits that all score alike get 1), weighted sum, ties
 * broken by id. rankings: lists of [id, score]. */
export function minmax(rankings, weights, size) {
  const scores = new Map();
  rankings.forEach((ranking, r) => {
    if (!ranking.length) return;
    const values = ranking.map(([, x]) => x);
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    for (const [id, x] of ranking) {
      scores.set(id, (scores.get(id) ?? 0) + weights[r] * (hi > lo ? (x - lo) / (hi - lo) : 1));
    }
  });
  return [...scores.entries()]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .slice(0, size);
}

/** The hybrid's fusion as the manifest says (esdistill's evaluate.hybrid_fusion): minmax or rrf. */
export function fuse(hybrid, lexical, dense, size) {
  if ((hybrid.fusion ?? "rrf") === "minmax") {
    return minmax([lexical, dense], [1 - hybrid.weight, hybrid.weight], size);
  }
  return rrf([lexical.map(([id]) => id), dense.map(([id]) => id)], hybrid.rrf_k, size);
}

function hitsOf(resp, what, manifest = null) {
  if (resp.error) throw new Error(`${what}: ${JSON.stringify(resp.error)}`);
  if (resp._shards?.failed) throw new Error(`${what}: ${resp._shards.failed} shard(s) failed`);
  if (manifest) checkHitsIndex(resp.hits.hits, manifest);
  return resp.hits.hits.map((h) => [h._id, h._score]);
}

/** Every kNN hit must come from the encoder's own deploy: the alias may move (a deploy, a rollback) while this
 * process runs, long after checkServedDeploy; a hit from another index was found with the wrong model's vector. */
export function checkHitsIndex(hits, manifest) {
  const other = hits.find((h) => h._index !== manifest.index);
  if (other) {
    throw new MismatchError(
      `alias ${manifest.alias} now serves ${other._index}, not this encoder's deploy ${manifest.deploy_key} ` +
        `(${manifest.index}): export the encoder of the served deploy (esdistill export --onnx) and restart`,
    );
  }
}

export async function search(engine, encoder, text, system = "student") {
  const m = encoder.manifest;
  const t0 = performance.now();
  const vector = await encoder.encode(text);
  const encodeMs = performance.now() - t0;
  let hits;
  let took;
  if (system === "student") {
    const resp = await engine.search(m.alias, knnBody(m, vector));
    hits = hitsOf(resp, `kNN search on ${m.alias}`, m);
    took = resp.took;
  } else if (system === "hybrid") {
    const resp = await engine.msearch(
      [{ index: m.hybrid.bm25_index }, bm25Body(m, text), { index: m.alias }, knnBody(m, vector)],
    );
    const [lexical, dense] = resp.responses.map((r, i) => hitsOf(r, `hybrid search ${i}`, i === 1 ? m : null));
    hits = fuse(m.hybrid, lexical, dense, m.knn.k);
    took = resp.took ?? Math.max(...resp.responses.map((r) => r.took));
  } else {
    throw new Error(`unknown system ${system}: student or hybrid`);
  }
  return { hits, vector, encodeMs, wallMs: performance.now() - t0, took };
}

/** The engine the manifest names, through its own client, with the credentials of the environment. */
export function engineFromEnv(manifest, url) {
  const kind = manifest.engine ?? "elasticsearch";
  const basic = process.env.ESDISTILL_ES_USERNAME
    ? { username: process.env.ESDISTILL_ES_USERNAME, password: process.env.ESDISTILL_ES_PASSWORD ?? "" }
    : undefined;
  const ca = process.env.ESDISTILL_ES_CA_CERTS ? readFileSync(process.env.ESDISTILL_ES_CA_CERTS) : undefined;
  if (kind === "opensearch") {
    if (process.env.ESDISTILL_ES_API_KEY) {
      throw new Error("ESDISTILL_ES_API_KEY is Elastic's; OpenSearch has no API keys: set ESDISTILL_ES_USERNAME " +
        "and ESDISTILL_ES_PASSWORD instead");
    }
    return new Engine(kind, new OpenSearchClient({ node: url, auth: basic, ssl: ca ? { ca } : undefined }));
  }
  if (kind !== "elasticsearch") {
    throw new Error(`this encoder's manifest names engine ${JSON.stringify(kind)}: elasticsearch or opensearch`);
  }
  const auth = process.env.ESDISTILL_ES_API_KEY ? { apiKey: process.env.ESDISTILL_ES_API_KEY } : basic;
  return new Engine(kind, new ElasticsearchClient({ node: url, auth, tls: ca ? { ca } : undefined }));
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      encoder: { type: "string" },
      url: { type: "string", default: process.env.ESDISTILL_ES_URL ?? "http://localhost:9200" },
      system: { type: "string", default: "student" },
      size: { type: "string", default: "10" },
      int8: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      "queries-file": { type: "string" },
      "bench-encode": { type: "string" },
      threads: { type: "string", default: "1" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help || !values.encoder) {
    console.error(
      "usage: node search.mjs --encoder FOLDER [--url URL] [--system student|hybrid] [--size N] [--int8] [--json]\n" +
        "                       [--queries-file FILE|-] [--bench-encode N] [--threads N] QUERY...\n" +
        "env: ESDISTILL_ES_URL, ESDISTILL_ES_API_KEY or ESDISTILL_ES_USERNAME/PASSWORD, ESDISTILL_ES_CA_CERTS",
    );
    process.exit(values.help ? 0 : 2);
  }
  // "--queries-file -": one query per line from stdin, each answered as it arrives (a long-running process)
  const fromStdin = values["queries-file"] === "-";
  const queries = fromStdin ? [] : values["queries-file"]
    ? readFileSync(values["queries-file"], "utf8").split("\n").filter((q) => q.trim())
    : positionals;
  const encoder = await QueryEncoder.load(values.encoder, { int8: values.int8, threads: Number(values.threads) });

  if (values["bench-encode"]) { // encoder latency only: no cluster needed
    const times = [];
    for (const q of queries.slice(0, 5)) await encoder.encode(q); // warm-up
    for (let r = 0; r < Number(values["bench-encode"]); r++) {
      for (const q of queries) {
        const t0 = performance.now();
        await encoder.encode(q);
        times.push(performance.now() - t0);
      }
    }
    times.sort((a, b) => a - b);
    console.log(JSON.stringify({ encoder: values.int8 ? "node onnx-int8" : "node onnx", n: times.length,
      p50_ms: percentile(times, 50), p99_ms: percentile(times, 99),
      mean_ms: times.reduce((a, b) => a + b, 0) / times.length }));
    return;
  }

  let engine;
  try {
    engine = engineFromEnv(encoder.manifest, values.url);
    await checkServedDeploy(engine, encoder.manifest);
    const lines = fromStdin ? createInterface({ input: process.stdin, crlfDelay: Infinity }) : queries;
    for await (const q of lines) {
      if (!q.trim()) continue;
      const res = await search(engine, encoder, q, values.system);
      const hits = res.hits.slice(0, Number(values.size));
      if (values.json) {
        console.log(JSON.stringify({ query: q, system: values.system, vector: res.vector, hits,
          encode_ms: res.encodeMs, wall_ms: res.wallMs, took_ms: res.took }));
      } else {
        console.log(`${values.system}: ${JSON.stringify(q)} — ${res.wallMs.toFixed(1)} ms wall ` +
          `(${res.encodeMs.toFixed(1)} ms encoding), ${res.took} ms in ${engine.kind}`);
        hits.forEach(([id, score], i) => console.log(`${String(i + 1).padStart(3)}  ${id}  ${score.toFixed(4)}`));
      }
    }
  } catch (e) {
    console.error(`error: ${e.message}`);
    process.exitCode = e instanceof MismatchError ? 3 : 1;
  } finally {
    await engine?.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
