"""Reach Elasticsearch: connect to a configured cluster, or run Elastic's test build locally.

The local cluster is ``org.elasticsearch.distribution.integ-test-zip:elasticsearch:<ES_VERSION>:zip`` from Maven
Central: a minimal distribution (BM25, ``dense_vector``, kNN, HNSW/int8/bbq; no ``english`` analyzer, painless,
``_reindex``, RRF or ML). It has no bundled JDK, needs Java >= 21 and refuses to run as root, so when started by
root it runs as a dedicated system user. Layout under :meth:`LocalClusterSettings.resolved_home`::

    dist/elasticsearch-<version>/      unpacked distribution (read-only for the node)
    node-<port>/{config,data,logs,tmp} one node's state, owned by the user that runs it
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from elasticsearch import Elasticsearch

from .config import ClusterSettings, LocalClusterSettings
from .errors import ClusterError

MAVEN_ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip"
MIN_JAVA = 21


# ------------------------------------------------------------------------------------------- connecting
def connect(settings: ClusterSettings | None = None, check: bool = True):
    """A client for the configured cluster (or the local test cluster when no URL is set): elasticsearch-py's
    ``Elasticsearch``, or opensearch-py's ``OpenSearch`` when the cluster is OpenSearch.

    Which engine: ``[cluster] engine`` (``ESDISTILL_ES_ENGINE``) when set; unset, what the cluster's ``GET /``
    says (``version.distribution == "opensearch"``; asked only with ``check``, else Elasticsearch is assumed).
    With ``check`` a set engine that the cluster contradicts is refused naming the setting, and the cluster is
    asked for its health; an unreachable cluster or refused credentials raise :class:`ClusterError` naming the
    URL (never the secret) and how to fix it.
    """
    settings = settings or ClusterSettings()
    engine = settings.engine
    if engine == "opensearch":
        client = _opensearch_client(settings)
    else:
        client = _elasticsearch_client(settings)
    url = _url(settings)
    local = settings.url is None and not settings.cloud_id
    if check:  # elasticsearch-py tells both engines apart (Elastic's product header), the test build included
        probe = client if isinstance(client, Elasticsearch) else _elasticsearch_client(settings)
        served = served_engine(probe)
        if probe is not client:
            probe.close()
        if engine is not None and served is not None and served != engine:
            client.close()
            raise ClusterError(
                f"[cluster] engine is {engine!r} (or ESDISTILL_ES_ENGINE), but the cluster at {url} is {served}",
                hint=f'set [cluster] engine = "{served}" (ESDISTILL_ES_ENGINE={served}), or leave it unset to '
                     "follow what the cluster's GET / says")
        if engine is None and served == "opensearch":
            client.close()
            client = _opensearch_client(settings)
        check_health(client, url, local=local)
    return client


def _url(settings: ClusterSettings) -> str:
    from .config import LocalOpenSearchSettings

    if settings.url:
        return settings.url
    if settings.cloud_id:
        return f"cloud id {settings.cloud_id.split(':')[0]}"
    return (LocalOpenSearchSettings() if settings.engine == "opensearch" else LocalClusterSettings()).url


def _elasticsearch_client(settings: ClusterSettings) -> Elasticsearch:
    url = _url(settings)
    kwargs: dict = {"request_timeout": settings.request_timeout, "retry_on_timeout": True, "max_retries": 3}
    if settings.api_key:
        kwargs["api_key"] = settings.api_key.get_secret_value()
    elif settings.username:
        kwargs["basic_auth"] = (settings.username, settings.password.get_secret_value() if settings.password else "")
    if settings.ca_certs:
        if not Path(settings.ca_certs).is_file():
            raise ClusterError(f"CA certificate file not found: {settings.ca_certs}",
                               hint="check ESDISTILL_ES_CA_CERTS (or [cluster] ca_certs)")
        kwargs["ca_certs"] = str(settings.ca_certs)
    if settings.ca_fingerprint:
        kwargs["ssl_assert_fingerprint"] = settings.ca_fingerprint.replace(":", "").lower()
    if url.startswith("https") or settings.cloud_id:
        kwargs["verify_certs"] = settings.verify_certs
    try:  # elasticsearch-py's orjson serializer: much faster on query vectors and large hit lists
        from elasticsearch.serializer import OrjsonSerializer

        kwargs["serializer"] = OrjsonSerializer()
    except ImportError:  # the orjson extra of elasticsearch is not installed: the standard json module
        pass
    if settings.cloud_id:
        return Elasticsearch(cloud_id=settings.cloud_id, **kwargs)
    return Elasticsearch(url, **kwargs)


def _opensearch_client(settings: ClusterSettings):
    """opensearch-py's client from the same settings (user and password, CA file or fingerprint, timeouts).
    Elastic's API keys and cloud ids are refused naming the setting."""
    from opensearchpy import OpenSearch

    if settings.api_key or settings.cloud_id:
        what = "api_key (ESDISTILL_ES_API_KEY)" if settings.api_key else "cloud_id (ESDISTILL_ES_CLOUD_ID)"
        raise ClusterError(f"[cluster] {what} is Elasticsearch's; OpenSearch takes neither",
                           hint="connect to OpenSearch with url and username/password (ESDISTILL_ES_URL, "
                                "ESDISTILL_ES_USERNAME, ESDISTILL_ES_PASSWORD)")
    url = _url(settings)
    kwargs: dict = {"timeout": settings.request_timeout, "retry_on_timeout": True, "max_retries": 3}
    if settings.username:
        kwargs["http_auth"] = (settings.username, settings.password.get_secret_value() if settings.password else "")
    if settings.ca_certs:
        if not Path(settings.ca_certs).is_file():
            raise ClusterError(f"CA certificate file not found: {settings.ca_certs}",
                               hint="check ESDISTILL_ES_CA_CERTS (or [cluster] ca_certs)")
        kwargs["ca_certs"] = str(settings.ca_certs)
    if settings.ca_fingerprint:
        kwargs["ssl_assert_fingerprint"] = settings.ca_fingerprint.replace(":", "").lower()
    if url.startswith("https"):
        kwargs["verify_certs"] = settings.verify_certs
    return OpenSearch([url], **kwargs)


def served_engine(client) -> str | None:
    """Which engine answers ``client`` (an Elasticsearch or OpenSearch client), from its ``GET /``:
    ``opensearch`` (``version.distribution``), ``elasticsearch`` (its answer, or — the test build has no ``GET
    /`` — its refusal, carries Elastic's ``X-Elastic-Product`` header), or None when it cannot say (unreachable,
    refused: the health check that follows names the problem)."""
    if isinstance(client, Elasticsearch):
        from elasticsearch import ApiError, TransportError, UnsupportedProductError

        try:
            client.options(max_retries=0).info()  # no retries: an unreachable cluster is the health check's to name
            return "elasticsearch"
        except UnsupportedProductError as e:  # elasticsearch-py refuses an answer without Elastic's header
            body = e.body if isinstance(e.body, dict) else {}
            return "opensearch" if (body.get("version") or {}).get("distribution") == "opensearch" else None
        except ApiError as e:
            return "elasticsearch" if e.meta.headers.get("x-elastic-product") == "Elasticsearch" else None
        except TransportError:
            return None
    from opensearchpy import exceptions as os_exc

    try:
        info = client.info()
    except os_exc.TransportError:
        return None
    version = info.get("version") or {}
    if version.get("distribution") == "opensearch":
        return "opensearch"
    return "elasticsearch" if "build_flavor" in version or "You Know, for Search" in str(info.get("tagline")) \
        else None


def connect_backend(settings: ClusterSettings | None = None, check: bool = True):
    """The search backend (:mod:`esdistill.backends`) of the configured cluster, connected by :func:`connect`
    (``check``: the engine and its health first)."""
    from .backends import backend_for

    return backend_for(connect(settings, check=check))


def check_health(client, url: str, local: bool = False) -> dict:
    """The cluster's health (Elasticsearch: ``GET /_cluster/health``; the test build has no ``GET /``) with errors
    rewritten for humans (:meth:`~esdistill.backends.SearchBackend.check`; ``client``: an engine client or a
    backend)."""
    from .backends import backend_for

    from opensearchpy import OpenSearch

    how = (
        "start the local test cluster with `esdistill cluster start`"
        + (" --engine opensearch" if isinstance(client, OpenSearch) else "")
        if local
        else "check ESDISTILL_ES_URL (or [cluster] url) and that the cluster is running"
    )
    return backend_for(client).check(url, how)


def check_shards(resp: dict, what: str) -> dict:
    """``resp`` (a search response, or one of an ``_msearch``) when every shard answered; a :class:`ClusterError`
    naming the failures when some did not. Elasticsearch answers 200 with the hits of the shards that worked, so
    a silently partial answer would pass for a complete one: candidates would miss documents, metrics would drop."""
    if "error" in resp:
        raise ClusterError(f"{what} failed: {resp['error']}")
    shards = resp.get("_shards", {})
    if shards.get("failed", 0):
        reasons = "; ".join(sorted({f"{f.get('index')}: {(f.get('reason') or {}).get('type')}: "
                                    f"{(f.get('reason') or {}).get('reason', '')[:200]}"
                                    for f in shards.get("failures", [])}))
        raise ClusterError(f"{what}: {shards['failed']} of {shards.get('total')} shards failed ({reasons})",
                           hint="the answer would be partial; fix the failing index (its mapping, its health) or the "
                                "query, then rerun")
    return resp


# ------------------------------------------------------------------------------------- the local build
@dataclass
class LocalStatus:
    running: bool
    url: str
    pid: int | None
    version: str
    home: Path
    health: str | None = None


class LocalCluster:
    """Fetch, configure, start and stop one local single-node Elasticsearch."""

    def __init__(self, settings: LocalClusterSettings | None = None):
        self.s = settings or LocalClusterSettings()
        self.home = self.s.resolved_home()
        self.dist = self.home / "dist" / f"elasticsearch-{self.s.version}"
        self.node = self.home / f"node-{self.s.port}"
        self.pidfile = self.node / "es.pid"

    # -- set-up ---------------------------------------------------------------------------------------
    def java_home(self) -> Path:
        """A JDK >= 21: the configured one, ``ES_JAVA_HOME``, or the newest found under /usr/lib/jvm."""
        candidates: list[Path] = []
        if self.s.java_home:
            candidates.append(self.s.java_home)
        for var in ("ES_JAVA_HOME", "JAVA_HOME"):
            if os.environ.get(var):
                candidates.append(Path(os.environ[var]))
        jvm = Path("/usr/lib/jvm")
        if jvm.is_dir():
            candidates += sorted((p for p in jvm.iterdir() if p.is_dir()), key=java_major, reverse=True)
        for home in candidates:
            if (home / "bin" / "java").exists() and java_major(home) >= MIN_JAVA:
                return home
        raise ClusterError(
            f"Elasticsearch {self.s.version} needs Java {MIN_JAVA}+; none found "
            f"(looked at {', '.join(str(c) for c in candidates) or 'nothing'})",
            hint="install one (e.g. `apt-get install openjdk-21-jdk-headless`) or set ESDISTILL_LOCAL_JAVA_HOME",
        )

    def fetch(self) -> Path:
        """Unpack the distribution, downloading it with Maven the first time. Returns its folder."""
        if (self.dist / "bin" / "elasticsearch").exists():
            return self.dist
        self.dist.parent.mkdir(parents=True, exist_ok=True)
        zip_path = self.s.zip or self._maven_download()
        with tempfile.TemporaryDirectory(dir=self.dist.parent) as tmp:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)
            unpacked = next(Path(tmp).iterdir())
            for f in (unpacked / "bin").iterdir():  # zipfile drops the exec bits
                f.chmod(0o755)
            unpacked.rename(self.dist)
        os.chmod(self.home, 0o755)
        return self.dist

    def _maven_download(self) -> Path:
        if not shutil.which("mvn"):
            raise ClusterError(
                "Maven (mvn) is needed to download Elasticsearch's test build",
                hint="install it (`apt-get install maven`) or set ESDISTILL_LOCAL_ZIP to a downloaded zip",
            )
        out = self.home / "download"
        out.mkdir(parents=True, exist_ok=True)
        artifact = MAVEN_ARTIFACT.format(version=self.s.version)
        cmd = ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={out}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        zip_path = out / f"elasticsearch-{self.s.version}.zip"
        if proc.returncode != 0 or not zip_path.exists():
            raise ClusterError(
                f"could not download {artifact} from Maven Central:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        return zip_path

    def _run_user(self) -> str | None:
        """The user that runs the node: the dedicated one when we are root, else ourselves (None)."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(self.s.user)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.s.user],
                check=True,
            )
        return self.s.user

    def configure(self) -> None:
        """Write the node's config folder: single node, loopback only, security off, small heap."""
        for sub in ("config", "data", "logs", "tmp"):
            (self.node / sub).mkdir(parents=True, exist_ok=True)
        conf = self.node / "config"
        for name in ("jvm.options", "log4j2.properties"):
            shutil.copy(self.dist / "config" / name, conf / name)
        (conf / "jvm.options.d").mkdir(exist_ok=True)
        (conf / "jvm.options.d" / "heap.options").write_text(f"-Xms{self.s.heap}\n-Xmx{self.s.heap}\n")
        (conf / "elasticsearch.yml").write_text(
            "\n".join(
                [
                    "cluster.name: esdistill-local",
                    "node.name: esdistill-node",
                    "discovery.type: single-node",
                    "network.host: 127.0.0.1",
                    f"http.port: {self.s.port}",
                    f"transport.port: {self.s.port + 100}",
                    f"path.data: {self.node / 'data'}",
                    f"path.logs: {self.node / 'logs'}",
                    *self._security_settings(),
                    "cluster.routing.allocation.disk.threshold_enabled: false",
                    "action.destructive_requires_name: false",
                    *(f"{k}: {v}" for k, v in self.s.extra_settings.items()),
                    "",
                ]
            )
        )
        if self.s.security:
            self._make_certs(conf / "certs")
            for name in ("users", "users_roles", "roles.yml", "role_mapping.yml"):
                src, dst = self.dist / "config" / name, conf / name
                if not dst.exists():
                    shutil.copy(src, dst) if src.exists() else dst.touch()
        user = self._run_user()
        if user:
            pw = pwd.getpwnam(user)
            for path in [self.node, *self.node.rglob("*")]:
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def _security_settings(self) -> list[str]:
        if not self.s.security:
            return ["xpack.security.enabled: false"]
        return ["xpack.security.enabled: true", "xpack.security.http.ssl.enabled: true",
                "xpack.security.http.ssl.key: certs/node.key", "xpack.security.http.ssl.certificate: certs/node.crt",
                "xpack.security.http.ssl.certificate_authorities: certs/ca.crt",
                "xpack.security.transport.ssl.enabled: false", "xpack.security.authc.realms.file.file1.order: 0"]

    def _make_certs(self, certs: Path) -> None:
        """A CA and a node certificate for 127.0.0.1/localhost (openssl), made once per node folder."""
        if (certs / "node.crt").exists():
            return
        certs.mkdir(exist_ok=True)

        def ssl(*args: str) -> None:
            proc = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=certs)
            if proc.returncode:
                raise ClusterError(f"openssl {args[0]} failed: {proc.stderr[-500:]}", hint="install openssl")

        ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=esdistill-local-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
        (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "node.key", "-out", "node.csr")
        ssl("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "3650",
            "-extfile", "san.ext", "-out", "node-only.crt")
        # the server sends its chain (node + CA), so clients may pin the CA by fingerprint
        (certs / "node.crt").write_text((certs / "node-only.crt").read_text() + (certs / "ca.crt").read_text())

    def _as_run_user(self, cmd: list[str], env: dict) -> list[str]:
        """``cmd`` as the user that runs the node (runuser drops the environment: the ES_* variables are passed)."""
        user = self._run_user()
        if not user:
            return cmd
        keep = [f"{k}={v}" for k, v in env.items() if k in ("ES_JAVA_HOME", "ES_PATH_CONF", "ES_TMPDIR")]
        return ["runuser", "-u", user, "--", "env", *keep, *cmd]

    def _add_user(self, env: dict) -> None:
        """The file-realm superuser the client logs in as (password from the settings, never printed)."""
        self.add_user(self.s.username, self.s.password.get_secret_value(), ["superuser"], env=env)

    def add_user(self, username: str, password: str, roles: list[str], role_definitions: dict | None = None,
                 env: dict | None = None) -> None:
        """A file-realm user of the secured node with ``roles``; ``role_definitions`` (name -> role body as
        ``roles.yml`` holds it, e.g. index privileges only) are added to ``roles.yml`` first. The node reloads
        both files while it runs. The password is never printed."""
        import json

        conf = self.node / "config"
        users = conf / "users"
        if role_definitions:
            with open(conf / "roles.yml", "a") as fh:
                for name, body in role_definitions.items():
                    fh.write(f"{name}: {json.dumps(body)}\n")  # JSON is YAML
        if users.exists() and f"{username}:" in users.read_text():
            return
        env = env or dict(os.environ, ES_JAVA_HOME=str(self.java_home()), ES_PATH_CONF=str(conf))
        cmd = [str(self.dist / "bin" / "elasticsearch-users"), "useradd", username, "-p", password, "-r",
               ",".join(roles)]
        proc = subprocess.run(self._as_run_user(cmd, env), capture_output=True, text=True, env=env)
        if proc.returncode:
            raise ClusterError(f"could not create the local user {username!r}: {proc.stdout[-300:]}"
                               f"{proc.stderr[-300:]}".replace(password, "***"))

    # -- life cycle -----------------------------------------------------------------------------------
    def _pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def client_settings(self) -> ClusterSettings:
        """How to connect to this local node (with its CA and user when it runs with security)."""
        if not self.s.security:
            return ClusterSettings(url=self.s.url)
        return ClusterSettings(url=self.s.url, username=self.s.username, password=self.s.password,
                               ca_certs=self.node / "config" / "certs" / "ca.crt")

    def _health(self, timeout: float = 2.0) -> str | None:
        kw = {}
        if self.s.security:
            cs = self.client_settings()
            kw = {"basic_auth": (cs.username, cs.password.get_secret_value()), "ca_certs": str(cs.ca_certs)}
        client = Elasticsearch(self.s.url, request_timeout=timeout, max_retries=0, **kw)
        try:
            return client.cluster.health().body["status"]
        except Exception:
            return None
        finally:
            client.close()

    def status(self) -> LocalStatus:
        pid = self._pid()
        health = self._health() if pid else None
        return LocalStatus(pid is not None and health is not None, self.s.url, pid, self.s.version, self.home, health)

    def start(self, timeout: float = 180.0, progress=None) -> LocalStatus:
        """Start the node (fetching and configuring it first) and wait until its health is yellow or green."""
        st = self.status()
        if st.running:
            return st
        if self._health():
            raise ClusterError(
                f"something else already answers on {self.s.url}",
                hint="stop it, or pick another port with ESDISTILL_LOCAL_PORT",
            )
        java = self.java_home()
        self.fetch()
        self.configure()
        env = dict(
            os.environ,
            ES_JAVA_HOME=str(java),
            ES_PATH_CONF=str(self.node / "config"),
            ES_TMPDIR=str(self.node / "tmp"),
        )
        env.pop("JAVA_HOME", None)
        env.pop("ES_JAVA_OPTS", None)
        if self.s.security:
            self._add_user(env)
        cmd = self._as_run_user([str(self.dist / "bin" / "elasticsearch"), "-d", "-p", str(self.pidfile)], env)
        log = self.node / "startup.log"
        with open(log, "wb") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.node)
        if proc.returncode != 0:
            raise ClusterError(f"Elasticsearch failed to start (exit {proc.returncode}):\n{_tail(log)}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self._health()
            if health in ("yellow", "green"):
                return self.status()
            if self._pid() is None and time.monotonic() > deadline - timeout + 10:
                raise ClusterError(f"Elasticsearch exited during start-up:\n{_tail(log)}")
            time.sleep(1.0)
        raise ClusterError(f"Elasticsearch did not become healthy within {timeout:.0f}s:\n{_tail(log)}")

    def stop(self, timeout: float = 60.0) -> bool:
        """SIGTERM the node and wait for it to exit (SIGKILL after ``timeout``). False if it was not running."""
        return stop_node(self._pid, self.pidfile, timeout)


def stop_node(pid_of, pidfile: Path, timeout: float = 60.0) -> bool:
    """SIGTERM the local node whose pid ``pid_of()`` reads and wait for it to exit (SIGKILL after ``timeout``);
    ``pidfile`` is removed. False if it was not running. Shared by the Elasticsearch and OpenSearch nodes."""
    pid = pid_of()
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_of() is None:
            break
        time.sleep(0.5)
    else:
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return True


def java_major(home: Path) -> int:
    """The major version of the JDK at ``home`` (from its ``release`` file, else its folder name; 0 if unknown)."""
    try:
        m = re.search(r'JAVA_VERSION="(?:1\.)?(\d+)', (home / "release").read_text())
        return int(m.group(1)) if m else 0
    except OSError:
        m = re.search(r"(\d+)", home.name)
        return int(m.group(1)) if m else 0


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
