package esdistill;

import ai.djl.huggingface.tokenizers.Encoding;
import ai.djl.huggingface.tokenizers.HuggingFaceTokenizer;
import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import co.elastic.clients.elasticsearch.ElasticsearchClient;
import co.elastic.clients.elasticsearch._types.query_dsl.Query;
import co.elastic.clients.elasticsearch.core.MsearchResponse;
import co.elastic.clients.elasticsearch.core.SearchResponse;
import co.elastic.clients.elasticsearch.core.msearch.MultiSearchResponseItem;
import co.elastic.clients.elasticsearch.core.search.Hit;
import co.elastic.clients.elasticsearch.indices.get_mapping.IndexMappingRecord;
import co.elastic.clients.json.JsonData;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.fasterxml.jackson.databind.node.TextNode;
import java.io.ByteArrayInputStream;
import java.io.StringReader;
import java.nio.LongBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

/**
 * Query an esdistill deploy from Java, as an application does on any Elastic license or on OpenSearch: encode the
 * query with the exported student (ONNX Runtime + the student's own tokenizer.json), then send a kNN request — or
 * BM25 and kNN in one _msearch, fused by reciprocal rank fusion here. Elasticsearch through the Elasticsearch Java
 * client; OpenSearch (the manifest's engine) through opensearch-java ({@link OpenSearchEngine}).
 *
 * <pre>
 *   esdistill export --onnx -c my.toml      # writes the encoder folder and prints its path
 *   mvn -q -B package dependency:copy-dependencies
 *   java -cp "target/classes:target/dependency/*" esdistill.Search --encoder FOLDER "my query"
 * </pre>
 *
 * The encoder refuses to run against an alias that serves another deploy: the manifest's deploy_key must equal the
 * _meta.esdistill.key of the index behind the alias (vectors of another model give wrong, plausible hits), checked at
 * start — and every kNN hit's index must be the manifest's, so an alias moved while the process runs (a deploy, a
 * rollback) stops it too (exit 3). A partial answer (failed shards, also of one _msearch item) is an error.
 */
public final class Search {
  private static final ObjectMapper JSON = new ObjectMapper();

  /** The exported query encoder: tokenizer.json + ONNX graph (token ids in, the normalised vector out). */
  public static final class QueryEncoder implements AutoCloseable {
    final JsonNode manifest;
    private final HuggingFaceTokenizer tokenizer;
    private final OrtEnvironment env = OrtEnvironment.getEnvironment();
    private final OrtSession session;

    public QueryEncoder(Path folder, boolean int8, int threads) throws Exception {
      manifest = JSON.readTree(folder.resolve("manifest.json").toFile());
      if (!"esdistill.query-encoder/1".equals(manifest.path("format").asText())) {
        throw new IllegalArgumentException(folder + "/manifest.json is not an esdistill query encoder");
      }
      Map<String, String> options = new HashMap<>();
      options.put("addSpecialTokens", "true");
      options.put("truncation", "true");
      options.put("padding", "false");
      options.put("maxLength", manifest.get("max_length").asText());
      tokenizer = HuggingFaceTokenizer.newInstance(folder.resolve("tokenizer.json"), options);
      OrtSession.SessionOptions so = new OrtSession.SessionOptions();
      so.setIntraOpNumThreads(threads);
      so.setInterOpNumThreads(1);
      session = env.createSession(folder.resolve(int8 ? "model_int8.onnx" : "model.onnx").toString(), so);
    }

    /** The query's vector, exactly as the Python student computes it. */
    public float[] encode(String text) throws OrtException {
      String prepared = manifest.get("prefix").asText()
          + (manifest.get("lowercase").asBoolean() ? text.toLowerCase(java.util.Locale.ROOT) : text);
      Encoding enc = tokenizer.encode(prepared);
      Map<String, long[]> arrays = Map.of("input_ids", enc.getIds(), "attention_mask", enc.getAttentionMask(),
          "token_type_ids", enc.getTypeIds());
      Map<String, OnnxTensor> feeds = new LinkedHashMap<>();
      try {
        for (JsonNode name : manifest.get("inputs")) {
          long[] values = arrays.get(name.asText());
          feeds.put(name.asText(), OnnxTensor.createTensor(env, LongBuffer.wrap(values), new long[] {1, values.length}));
        }
        try (OrtSession.Result out = session.run(feeds)) {
          return ((float[][]) out.get(manifest.get("output").asText()).get().getValue())[0];
        }
      } finally {
        feeds.values().forEach(OnnxTensor::close);
      }
    }

    @Override
    public void close() throws OrtException {
      session.close();
      tokenizer.close();
    }
  }

  /** Thrown when the alias serves another deploy than the encoder's. */
  public static final class MismatchException extends Exception {
    MismatchException(String message) {
      super(message);
    }
  }

  public static void checkServedDeploy(ElasticsearchClient client, JsonNode m) throws Exception {
    String alias = m.get("alias").asText();
    String expected = m.get("deploy_key").asText();
    Map<String, IndexMappingRecord> served = client.indices().getMapping(g -> g.index(alias)).mappings();
    List<String> what = new ArrayList<>();
    boolean ok = !served.isEmpty();
    for (Map.Entry<String, IndexMappingRecord> e : served.entrySet()) {
      JsonData ours = e.getValue().mappings().meta().get("esdistill");
      String key = ours == null ? null : ours.toJson().asJsonObject().getString("key", null);
      ok &= expected.equals(key);
      what.add(e.getKey() + " (deploy " + (key == null ? "none" : key) + ")");
    }
    if (!ok) {
      throw notServed(m, what);
    }
  }

  /** The alias serves other indices (``what``: "index (deploy key)") than this encoder's deploy. */
  static MismatchException notServed(JsonNode m, List<String> what) {
    return new MismatchException("this encoder belongs to deploy " + m.get("deploy_key").asText() + " ("
        + m.get("index").asText() + "), but alias " + m.get("alias").asText() + " serves "
        + (what.isEmpty() ? "nothing" : String.join(", ", what))
        + ": export the encoder of the served deploy (esdistill export --onnx)");
  }

  /** A kNN hit came from index ``other``: the alias moved after the check at start. */
  static MismatchException moved(JsonNode m, String other) {
    return new MismatchException("alias " + m.get("alias").asText() + " now serves " + other
        + ", not this encoder's deploy " + m.get("deploy_key").asText() + " (" + m.get("index").asText()
        + "): export the encoder of the served deploy (esdistill export --onnx) and restart");
  }

  /** One ranking: ids and scores, best first. */
  public record Hits(List<String> ids, List<Double> scores, float[] vector, double encodeMs, double wallMs, long took) {}

  static List<Float> boxed(float[] v) {
    List<Float> out = new ArrayList<>(v.length);
    for (float x : v) {
      out.add(x);
    }
    return out;
  }

  /** The manifest's BM25 query with the text put where "{{query}}" stands. */
  static JsonNode fill(JsonNode node, String text) {
    return fill(node, Map.of("{{query}}", TextNode.valueOf(text)));
  }

  /** A manifest's request template with each placeholder ("{{query}}", "{{vector}}") replaced by its value. */
  static JsonNode fill(JsonNode node, Map<String, JsonNode> values) {
    if (node.isTextual() && values.containsKey(node.asText())) {
      return values.get(node.asText());
    }
    if (node.isArray()) {
      ArrayNode out = JSON.createArrayNode();
      node.forEach(n -> out.add(fill(n, values)));
      return out;
    }
    if (node.isObject()) {
      ObjectNode out = JSON.createObjectNode();
      node.fields().forEachRemaining(e -> out.set(e.getKey(), fill(e.getValue(), values)));
      return out;
    }
    return node;
  }

  /** Reciprocal rank fusion: score(d) = sum over rankings of 1 / (rrfK + rank), ties broken by id. */
  static List<Map.Entry<String, Double>> rrf(List<List<String>> rankings, int rrfK, int size) {
    Map<String, Double> scores = new HashMap<>();
    for (List<String> ranking : rankings) {
      for (int i = 0; i < ranking.size(); i++) {
        scores.merge(ranking.get(i), 1.0 / (rrfK + i + 1), Double::sum);
      }
    }
    List<Map.Entry<String, Double>> fused = new ArrayList<>(scores.entrySet());
    fused.sort((a, b) -> a.getValue().equals(b.getValue()) ? a.getKey().compareTo(b.getKey())
        : Double.compare(b.getValue(), a.getValue()));
    return fused.subList(0, Math.min(size, fused.size()));
  }

  /**
   * Min-max fusion, as esdistill's hybrid (esdistill/search.py minmax): each ranking's scores min-max normalised
   * over its own hits (a document it did not return adds 0; hits that all score alike get 1), weighted sum, ties
   * broken by id. Rankings: (id, score) lists.
   */
  static List<Map.Entry<String, Double>> minmax(List<List<Map.Entry<String, Double>>> rankings, double[] weights,
      int size) {
    Map<String, Double> scores = new HashMap<>();
    for (int r = 0; r < rankings.size(); r++) {
      List<Map.Entry<String, Double>> ranking = rankings.get(r);
      if (ranking.isEmpty()) {
        continue;
      }
      double lo = ranking.stream().mapToDouble(Map.Entry::getValue).min().getAsDouble();
      double hi = ranking.stream().mapToDouble(Map.Entry::getValue).max().getAsDouble();
      for (Map.Entry<String, Double> e : ranking) {
        double x = e.getValue();
        scores.merge(e.getKey(), weights[r] * (hi > lo ? (x - lo) / (hi - lo) : 1.0), Double::sum);
      }
    }
    List<Map.Entry<String, Double>> fused = new ArrayList<>(scores.entrySet());
    fused.sort((a, b) -> a.getValue().equals(b.getValue()) ? a.getKey().compareTo(b.getKey())
        : Double.compare(b.getValue(), a.getValue()));
    return fused.subList(0, Math.min(size, fused.size()));
  }

  /** The hybrid's fusion as the manifest says (esdistill's evaluate.hybrid_fusion): minmax or rrf. */
  static List<Map.Entry<String, Double>> fuse(JsonNode hybrid, List<List<Map.Entry<String, Double>>> rankings,
      int size) {
    if ("minmax".equals(hybrid.path("fusion").asText("rrf"))) {
      double w = hybrid.get("weight").asDouble();
      return minmax(rankings, new double[] {1.0 - w, w}, size);
    }
    List<List<String>> ids = rankings.stream().map(r -> r.stream().map(Map.Entry::getKey).toList()).toList();
    return rrf(ids, hybrid.get("rrf_k").asInt(), size);
  }

  static void check(SearchResponse<Void> r, String what) {
    checkShards(r.shards(), what);
  }

  /** A search where some shards failed answers with the others' hits: a partial answer is an error, not fewer hits. */
  static void checkShards(co.elastic.clients.elasticsearch._types.ShardStatistics shards, String what) {
    if (shards.failed().intValue() > 0) {
      throw new IllegalStateException(what + ": " + shards.failed() + " of " + shards.total() + " shard(s) failed");
    }
  }

  /**
   * Every kNN hit must come from the encoder's own deploy: the alias may move (a deploy, a rollback) while this
   * process runs, long after checkServedDeploy; a hit from another index was found with the wrong model's vector.
   */
  static void checkHitsIndex(List<Hit<Void>> hits, JsonNode m) throws MismatchException {
    String index = m.get("index").asText();
    for (Hit<Void> h : hits) {
      if (!index.equals(h.index())) {
        throw moved(m, h.index());
      }
    }
  }

  public static Hits search(ElasticsearchClient client, QueryEncoder encoder, String text, String system)
      throws Exception {
    JsonNode m = encoder.manifest;
    String alias = m.get("alias").asText();
    String field = m.get("vector_field").asText();
    int k = m.get("knn").get("k").asInt();
    int numCandidates = Math.max(m.get("knn").get("num_candidates").asInt(), k);
    long t0 = System.nanoTime();
    float[] vector = encoder.encode(text);
    double encodeMs = (System.nanoTime() - t0) / 1e6;
    List<Float> qv = boxed(vector);
    List<String> ids = new ArrayList<>();
    List<Double> scores = new ArrayList<>();
    long took;
    if (system.equals("student")) {
      SearchResponse<Void> r = client.search(s -> s.index(alias)
          .knn(kn -> kn.field(field).queryVector(qv).k(k).numCandidates(numCandidates))
          .size(k).source(src -> src.fetch(false)), Void.class);
      check(r, "kNN search on " + alias);
      checkHitsIndex(r.hits().hits(), m);
      for (Hit<Void> h : r.hits().hits()) {
        ids.add(h.id());
        scores.add(h.score());
      }
      took = r.took();
    } else if (system.equals("hybrid")) {
      JsonNode hybrid = m.get("hybrid");
      String bm25Json = JSON.writeValueAsString(fill(hybrid.get("bm25_query"), text));
      Query bm25 = Query.of(q -> q.withJson(new StringReader(bm25Json)));
      MsearchResponse<Void> r = client.msearch(ms -> ms
          .searches(s -> s.header(h -> h.index(hybrid.get("bm25_index").asText()))
              .body(b -> b.query(bm25).size(k).source(src -> src.fetch(false)).trackTotalHits(t -> t.enabled(false))))
          .searches(s -> s.header(h -> h.index(alias))
              .body(b -> b.knn(kn -> kn.field(field).queryVector(qv).k(k).numCandidates(numCandidates))
                  .size(k).source(src -> src.fetch(false)))), Void.class);
      List<List<Map.Entry<String, Double>>> rankings = new ArrayList<>();
      String[] what = {"hybrid search: BM25 on " + hybrid.get("bm25_index").asText(), "hybrid search: kNN on " + alias};
      for (int i = 0; i < r.responses().size(); i++) {
        MultiSearchResponseItem<Void> item = r.responses().get(i);
        if (item.isFailure()) {
          throw new IllegalStateException(what[i] + ": " + item.failure().error().reason());
        }
        checkShards(item.result().shards(), what[i]);
        if (i == 1) {
          checkHitsIndex(item.result().hits().hits(), m);
        }
        rankings.add(item.result().hits().hits().stream()
            .map(h -> Map.entry(h.id(), h.score() == null ? 0.0 : h.score())).toList());
      }
      for (Map.Entry<String, Double> e : fuse(hybrid, rankings, k)) {
        ids.add(e.getKey());
        scores.add(e.getValue());
      }
      took = r.took();
    } else {
      throw new IllegalArgumentException("unknown system " + system + ": student or hybrid");
    }
    return new Hits(ids, scores, vector, encodeMs, (System.nanoTime() - t0) / 1e6, took);
  }

  /** A TLS context trusting ESDISTILL_ES_CA_CERTS, or null when it is not set. */
  static SSLContext sslContextFromEnv() throws Exception {
    String ca = System.getenv("ESDISTILL_ES_CA_CERTS");
    if (ca == null || ca.isEmpty()) {
      return null;
    }
    KeyStore ks = KeyStore.getInstance(KeyStore.getDefaultType());
    ks.load(null, null);
    ks.setCertificateEntry("ca", CertificateFactory.getInstance("X.509")
        .generateCertificate(new ByteArrayInputStream(Files.readAllBytes(Path.of(ca)))));
    TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
    tmf.init(ks);
    SSLContext ssl = SSLContext.getInstance("TLS");
    ssl.init(null, tmf.getTrustManagers(), null);
    return ssl;
  }

  static ElasticsearchClient clientFromEnv(String url) throws Exception {
    String apiKey = System.getenv("ESDISTILL_ES_API_KEY");
    String user = System.getenv("ESDISTILL_ES_USERNAME");
    SSLContext sslContext = sslContextFromEnv();
    return ElasticsearchClient.of(b -> {
      b.host(url);
      if (apiKey != null && !apiKey.isEmpty()) {
        b.apiKey(apiKey);
      } else if (user != null && !user.isEmpty()) {
        b.usernameAndPassword(user, System.getenv().getOrDefault("ESDISTILL_ES_PASSWORD", ""));
      }
      if (sslContext != null) {
        b.sslContext(sslContext);
      }
      return b;
    });
  }

  static double percentile(double[] sorted, double p) {
    return sorted[(int) Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))];
  }

  public static void main(String[] args) throws Exception {
    Map<String, String> opts = new HashMap<>(Map.of("url",
        System.getenv().getOrDefault("ESDISTILL_ES_URL", "http://localhost:9200"), "system", "student",
        "size", "10", "threads", "1"));
    List<String> queries = new ArrayList<>();
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--int8", "--json", "--help" -> opts.put(args[i].substring(2), "true");
        case "--encoder", "--url", "--system", "--size", "--queries-file", "--bench-encode", "--threads" ->
            opts.put(args[i].substring(2), args[++i]);
        default -> queries.add(args[i]);
      }
    }
    if (opts.containsKey("help") || !opts.containsKey("encoder")) {
      System.err.println("usage: esdistill.Search --encoder FOLDER [--url URL] [--system student|hybrid] [--size N]"
          + " [--int8] [--json] [--queries-file FILE|-] [--bench-encode N] [--threads N] QUERY...\n"
          + "env: ESDISTILL_ES_URL, ESDISTILL_ES_API_KEY or ESDISTILL_ES_USERNAME/PASSWORD, ESDISTILL_ES_CA_CERTS");
      System.exit(opts.containsKey("help") ? 0 : 2);
    }
    // "--queries-file -": one query per line from stdin, each answered as it arrives (a long-running process)
    boolean fromStdin = "-".equals(opts.get("queries-file"));
    if (opts.containsKey("queries-file") && !fromStdin) {
      Files.readAllLines(Path.of(opts.get("queries-file"))).stream().filter(q -> !q.isBlank()).forEach(queries::add);
    }
    boolean int8 = opts.containsKey("int8");
    try (QueryEncoder encoder = new QueryEncoder(Path.of(opts.get("encoder")), int8,
        Integer.parseInt(opts.get("threads")))) {
      if (opts.containsKey("bench-encode")) { // encoder latency only: no cluster needed
        for (String q : queries.subList(0, Math.min(5, queries.size()))) {
          encoder.encode(q);
        }
        int rounds = Integer.parseInt(opts.get("bench-encode"));
        double[] times = new double[rounds * queries.size()];
        int n = 0;
        for (int r = 0; r < rounds; r++) {
          for (String q : queries) {
            long t0 = System.nanoTime();
            encoder.encode(q);
            times[n++] = (System.nanoTime() - t0) / 1e6;
          }
        }
        Arrays.sort(times);
        ObjectNode out = JSON.createObjectNode().put("encoder", int8 ? "java onnx-int8" : "java onnx").put("n", n)
            .put("p50_ms", percentile(times, 50)).put("p99_ms", percentile(times, 99))
            .put("mean_ms", Arrays.stream(times).average().orElse(0));
        System.out.println(out);
        return;
      }
      String engine = encoder.manifest.path("engine").asText("elasticsearch");
      if (!engine.equals("elasticsearch") && !engine.equals("opensearch")) {
        System.err.println("error: this encoder's manifest names engine " + engine + ": elasticsearch or opensearch");
        System.exit(2);
      }
      OpenSearchEngine os = null;
      ElasticsearchClient client = null;
      int code = 0;
      try {
        if (engine.equals("opensearch")) {
          os = OpenSearchEngine.fromEnv(opts.get("url"), sslContextFromEnv());
          os.checkServedDeploy(encoder.manifest);
        } else {
          client = clientFromEnv(opts.get("url"));
          checkServedDeploy(client, encoder.manifest);
        }
        String system = opts.get("system");
        int size = Integer.parseInt(opts.get("size"));
        Iterable<String> lines = fromStdin
            ? new java.io.BufferedReader(new java.io.InputStreamReader(System.in,
                java.nio.charset.StandardCharsets.UTF_8)).lines().filter(q -> !q.isBlank())::iterator
            : queries;
        for (String q : lines) {
          Hits res = os != null ? os.search(encoder, q, system) : search(client, encoder, q, system);
          int shown = Math.min(size, res.ids().size());
          if (opts.containsKey("json")) {
            ObjectNode line = JSON.createObjectNode().put("query", q).put("system", system);
            ArrayNode vec = line.putArray("vector");
            for (float x : res.vector()) {
              vec.add(x);
            }
            ArrayNode hits = line.putArray("hits");
            for (int i = 0; i < shown; i++) {
              hits.addArray().add(res.ids().get(i)).add(res.scores().get(i));
            }
            line.put("encode_ms", res.encodeMs()).put("wall_ms", res.wallMs()).put("took_ms", res.took());
            System.out.println(line);
            System.out.flush();
          } else {
            System.out.printf("%s: \"%s\" — %.1f ms wall (%.1f ms encoding), %d ms in %s%n", system, q,
                res.wallMs(), res.encodeMs(), res.took(), engine);
            for (int i = 0; i < shown; i++) {
              System.out.printf("%3d  %s  %.4f%n", i + 1, res.ids().get(i), res.scores().get(i));
            }
          }
        }
      } catch (MismatchException e) {
        System.err.println("error: " + e.getMessage());
        code = 3;
      } catch (Exception e) {
        System.err.println("error: " + e);
        code = 1;
      } finally {
        if (client != null) {
          client.close();
        }
        if (os != null) {
          os.close();
        }
      }
      if (code != 0) {
        System.exit(code);
      }
    }
  }
}
