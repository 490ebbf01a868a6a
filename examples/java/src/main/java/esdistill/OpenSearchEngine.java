package esdistill;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import javax.net.ssl.SSLContext;
import org.apache.hc.client5.http.auth.AuthScope;
import org.apache.hc.client5.http.auth.UsernamePasswordCredentials;
import org.apache.hc.client5.http.impl.auth.BasicCredentialsProvider;
import org.apache.hc.client5.http.impl.nio.PoolingAsyncClientConnectionManagerBuilder;
import org.apache.hc.client5.http.ssl.ClientTlsStrategyBuilder;
import org.apache.hc.core5.http.HttpHost;
import org.opensearch.client.opensearch.OpenSearchClient;
import org.opensearch.client.opensearch.generic.Body;
import org.opensearch.client.opensearch.generic.OpenSearchGenericClient;
import org.opensearch.client.opensearch.generic.Request;
import org.opensearch.client.opensearch.generic.Requests;
import org.opensearch.client.opensearch.generic.Response;
import org.opensearch.client.transport.OpenSearchTransport;
import org.opensearch.client.transport.httpclient5.ApacheHttpClient5TransportBuilder;

/**
 * The same search on OpenSearch, through opensearch-java: its generic client sends the requests esdistill wrote into
 * the manifest (the kNN request in OpenSearch's own form, the BM25 query) as JSON, so what runs here is what the
 * Python student runs. The checks are the Elasticsearch path's: the alias must serve the encoder's deploy (at start
 * and on every kNN hit), and a partial answer (failed shards, an _msearch item's error) is an error.
 */
final class OpenSearchEngine implements AutoCloseable {
  private static final ObjectMapper JSON = new ObjectMapper();
  private final OpenSearchTransport transport;
  private final OpenSearchGenericClient client;

  private OpenSearchEngine(OpenSearchTransport transport) {
    this.transport = transport;
    this.client = new OpenSearchClient(transport).generic();
  }

  /** The cluster at url, with ESDISTILL_ES_USERNAME/PASSWORD (OpenSearch has no API keys) and a TLS context. */
  static OpenSearchEngine fromEnv(String url, SSLContext ssl) throws Exception {
    if (!System.getenv().getOrDefault("ESDISTILL_ES_API_KEY", "").isEmpty()) {
      throw new IllegalArgumentException("ESDISTILL_ES_API_KEY is Elastic's; OpenSearch has no API keys: set "
          + "ESDISTILL_ES_USERNAME and ESDISTILL_ES_PASSWORD instead");
    }
    String user = System.getenv("ESDISTILL_ES_USERNAME");
    HttpHost host = HttpHost.create(url);
    ApacheHttpClient5TransportBuilder b = ApacheHttpClient5TransportBuilder.builder(host);
    b.setHttpClientConfigCallback(http -> {
      if (user != null && !user.isEmpty()) {
        BasicCredentialsProvider credentials = new BasicCredentialsProvider();
        credentials.setCredentials(new AuthScope(host), new UsernamePasswordCredentials(user,
            System.getenv().getOrDefault("ESDISTILL_ES_PASSWORD", "").toCharArray()));
        http.setDefaultCredentialsProvider(credentials);
      }
      if (ssl != null) {
        http.setConnectionManager(PoolingAsyncClientConnectionManagerBuilder.create()
            .setTlsStrategy(ClientTlsStrategyBuilder.create().setSslContext(ssl).build()).build());
      }
      return http;
    });
    return new OpenSearchEngine(b.build());
  }

  /** The answer of one request, parsed; an HTTP error is an error naming what was asked. */
  private JsonNode call(String what, Request request) throws IOException {
    try (Response r = client.execute(request)) {
      String body = r.getBody().map(Body::bodyAsString).orElse("");
      if (r.getStatus() >= 300) {
        throw new IllegalStateException(what + ": HTTP " + r.getStatus() + " " + body);
      }
      return JSON.readTree(body);
    }
  }

  void checkServedDeploy(JsonNode m) throws Exception {
    String alias = m.get("alias").asText();
    JsonNode served = call("mapping of " + alias, Requests.builder().endpoint("/" + alias + "/_mapping")
        .method("GET").build());
    List<String> what = new ArrayList<>();
    boolean ok = served.size() > 0;
    for (Iterator<Map.Entry<String, JsonNode>> it = served.fields(); it.hasNext(); ) {
      Map.Entry<String, JsonNode> e = it.next();
      JsonNode key = e.getValue().path("mappings").path("_meta").path("esdistill").path("key");
      ok &= m.get("deploy_key").asText().equals(key.asText(null));
      what.add(e.getKey() + " (deploy " + (key.isMissingNode() ? "none" : key.asText()) + ")");
    }
    if (!ok) {
      throw Search.notServed(m, what);
    }
  }

  /** Ids of a search answer; failed shards are an error, and ``m`` (for kNN) names the only index allowed. */
  static List<Map.Entry<String, Double>> hits(JsonNode resp, String what, JsonNode m) throws Search.MismatchException {
    if (resp.has("error")) {
      throw new IllegalStateException(what + ": " + resp.get("error"));
    }
    int failed = resp.path("_shards").path("failed").asInt(0);
    if (failed > 0) {
      throw new IllegalStateException(what + ": " + failed + " of " + resp.path("_shards").path("total").asInt()
          + " shard(s) failed");
    }
    List<Map.Entry<String, Double>> out = new ArrayList<>();
    for (JsonNode h : resp.path("hits").path("hits")) {
      if (m != null && !m.get("index").asText().equals(h.get("_index").asText())) {
        throw Search.moved(m, h.get("_index").asText());
      }
      out.add(Map.entry(h.get("_id").asText(), h.get("_score").asDouble()));
    }
    return out;
  }

  Search.Hits search(Search.QueryEncoder encoder, String text, String system) throws Exception {
    JsonNode m = encoder.manifest;
    String alias = m.get("alias").asText();
    int k = m.get("knn").get("k").asInt();
    long t0 = System.nanoTime();
    float[] vector = encoder.encode(text);
    double encodeMs = (System.nanoTime() - t0) / 1e6;
    ArrayNode qv = JSON.createArrayNode();
    for (float x : vector) {
      qv.add(x);
    }
    JsonNode knn = Search.fill(m.get("knn_request"), Map.of("{{vector}}", qv));
    List<String> ids = new ArrayList<>();
    List<Double> scores = new ArrayList<>();
    long took;
    if (system.equals("student")) {
      JsonNode r = call("kNN search on " + alias, Requests.builder().endpoint("/" + alias + "/_search")
          .method("POST").json(JSON.writeValueAsString(knn)).build());
      for (Map.Entry<String, Double> h : hits(r, "kNN search on " + alias, m)) {
        ids.add(h.getKey());
        scores.add(h.getValue());
      }
      took = r.path("took").asLong();
    } else if (system.equals("hybrid")) {
      JsonNode hybrid = m.get("hybrid");
      String bm25Index = hybrid.get("bm25_index").asText();
      JsonNode bm25 = JSON.createObjectNode().<ObjectNode>set("query",
          Search.fill(hybrid.get("bm25_query"), text)).put("size", k).put("_source", false)
          .put("track_total_hits", false);
      ByteArrayOutputStream nd = new ByteArrayOutputStream();
      for (JsonNode line : List.of(JSON.createObjectNode().put("index", bm25Index), bm25,
          JSON.createObjectNode().put("index", alias), knn)) {
        nd.write(JSON.writeValueAsBytes(line));
        nd.write('\n');
      }
      JsonNode r = call("hybrid search", Requests.builder().endpoint("/_msearch").method("POST")
          .body(Body.from(nd.toByteArray(), "application/x-ndjson")).build());
      String[] what = {"hybrid search: BM25 on " + bm25Index, "hybrid search: kNN on " + alias};
      List<List<Map.Entry<String, Double>>> rankings = new ArrayList<>();
      for (int i = 0; i < 2; i++) {
        rankings.add(hits(r.get("responses").get(i), what[i], i == 1 ? m : null));
      }
      for (Map.Entry<String, Double> e : Search.fuse(hybrid, rankings, k)) {
        ids.add(e.getKey());
        scores.add(e.getValue());
      }
      took = r.path("took").asLong();
    } else {
      throw new IllegalArgumentException("unknown system " + system + ": student or hybrid");
    }
    return new Search.Hits(ids, scores, vector, encodeMs, (System.nanoTime() - t0) / 1e6, took);
  }

  @Override
  public void close() throws IOException {
    transport.close();
  }
}
