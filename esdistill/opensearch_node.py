"""A local single-node OpenSearch with k-NN and in-cluster ML, assembled from Maven Central alone.

``esdistill cluster start --engine opensearch`` (or ``[cluster] engine = "opensearch"`` /
``ESDISTILL_ES_ENGINE=opensearch``) runs it. What it is made of (:data:`ARTIFACTS`, :data:`MODULES`), all fetched
with ``mvn`` like the Elasticsearch test build (:mod:`esdistill.cluster`) and the artifact-mirror models
(:mod:`esdistill.model_source`), so a machine's ``~/.m2/settings.xml`` mirrors apply and ``ESDISTILL_MAVEN_ARGS``
adds arguments:

- ``org.opensearch.distribution.integ-test-zip:opensearch:<version>:zip``: the server, with no bundled JDK and
  only ``transport-netty4`` among its modules;
- the modules the loop needs, rebuilt from their plain Maven jars (and runtime dependencies) into
  ``modules/<name>/`` with a ``plugin-descriptor.properties``: ``lang-painless`` (k-NN needs it),
  ``analysis-common`` (the ``english`` analyzer: BM25 with stemming), ``mapper-extras``, ``reindex``
  (``_reindex``), ``ingest-common``;
- the plugins ``opensearch-job-scheduler``, ``opensearch-knn``, ``opensearch-ml-plugin`` (ml-commons) and
  ``neural-search``, installed with ``bin/opensearch-plugin``. k-NN's Maven zip has no faiss/nmslib native
  libraries: every ``knn_vector`` mapping must name ``"engine": "lucene"`` (a faiss index crashes the node);
- libtorch (``ai.djl.pytorch:pytorch-native-cpu``) and DJL's JNI (``ai.djl.pytorch:pytorch-jni``) in one folder
  that the JVM gets as ``-DPYTORCH_LIBRARY_PATH``: ml-commons would otherwise download libtorch from the internet
  at its first model deploy, even for ONNX models.

Assembled once per version into ``<home>/dist/opensearch-<version>/`` (built in a temporary folder beside it and
renamed into place, so an interrupted build leaves nothing that looks finished; a ``esdistill-assembly.json``
marker names the recipe, and a folder from another recipe is rebuilt). Each node's state lives in
``<home>/node-<port>-<version>/{config,data,logs,tmp}`` (a data folder written by a newer Lucene cannot be read by
an older one), owned by the user that runs it: OpenSearch refuses to run as root, so when started by root it runs
as a system user (the one the Elasticsearch build uses). ``<home>`` is
``opensearch/`` beside the local Elasticsearch (:meth:`LocalClusterSettings.resolved_home`) unless
``ESDISTILL_OS_LOCAL_HOME`` says otherwise.

Java: OpenSearch 2.x runs on Java 11 to 23 (it installs a Java Security Manager, which Java 24 removed); 3.x needs
Java 21 or newer (``ESDISTILL_OS_LOCAL_VERSION=3.6.0`` ran the node's tests on Java 25: its integ-test zip ships
the modules, and its ml-commons uses the same DJL 0.31.1, so the same libtorch folder serves it). The newest JDK
in range is used (``ESDISTILL_OS_LOCAL_JAVA_HOME``, ``OPENSEARCH_JAVA_HOME``, ``JAVA_HOME`` or one under
``/usr/lib/jvm``).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .cluster import _tail, java_major, stop_node
from .config import LocalOpenSearchSettings
from .errors import ClusterError

#: Bumped when the assembled folder's contents change: a folder assembled by another recipe is rebuilt.
RECIPE = 1

#: Plugins installed with ``bin/opensearch-plugin``, in dependency order (ml-commons extends job-scheduler).
PLUGINS = ("opensearch-job-scheduler", "opensearch-knn", "opensearch-ml-plugin", "neural-search")

#: Modules rebuilt from plain jars: folder name -> (artifact id, plugin class, extended plugins).
MODULES = {
    "lang-painless": ("lang-painless", "org.opensearch.painless.PainlessPlugin", ""),
    "analysis-common": ("analysis-common", "org.opensearch.analysis.common.CommonAnalysisPlugin", "lang-painless"),
    "mapper-extras": ("mapper-extras-client", "org.opensearch.index.mapper.MapperExtrasPlugin", ""),
    "reindex": ("reindex-client", "org.opensearch.index.reindex.ReindexPlugin", "lang-painless"),
    "ingest-common": ("ingest-common", "org.opensearch.ingest.common.IngestCommonPlugin", "lang-painless"),
}

#: libtorch for ml-commons' DJL: the native libraries and a JNI that DJL 0.31 loads (see the module docstring).
LIBTORCH = ("ai.djl.pytorch", "pytorch-native-cpu", "2.5.1", "linux-x86_64")
DJL_JNI = ("ai.djl.pytorch", "pytorch-jni", "2.5.1-0.32.0")

_PAINLESS_POLICY = ('grant {\n  permission java.lang.RuntimePermission "createClassLoader";\n'
                    '  permission java.lang.RuntimePermission "getClassLoader";\n};\n')


def artifacts(version: str) -> list[str]:
    """The Maven coordinates (``group:artifact:version[:type[:classifier]]``) one assembly of ``version`` fetches
    directly (the modules' jars come with their runtime dependencies on top)."""
    pv = f"{version}.0"
    return [f"org.opensearch.distribution.integ-test-zip:opensearch:{version}:zip",
            *(f"org.opensearch.plugin:{p}:{pv}:zip" for p in PLUGINS),
            f"{LIBTORCH[0]}:{LIBTORCH[1]}:{LIBTORCH[2]}:jar:{LIBTORCH[3]}",
            f"{DJL_JNI[0]}:{DJL_JNI[1]}:{DJL_JNI[2]}:jar",
            *(f"org.opensearch.plugin:{art}:{version}:jar" for art, _, _ in MODULES.values())]


@dataclass
class OpenSearchStatus:
    running: bool
    url: str
    pid: int | None
    version: str
    home: Path
    health: str | None = None
    engine: str = "opensearch"


class OpenSearchNode:
    """Assemble (once), configure, start, and stop one local single-node OpenSearch."""

    name = "OpenSearch"

    def __init__(self, settings: LocalOpenSearchSettings | None = None):
        self.s = settings or LocalOpenSearchSettings()
        self.home = self.s.resolved_home()
        self.dist = self.home / "dist" / f"opensearch-{self.s.version}"
        self.node = self.home / f"node-{self.s.port}-{self.s.version}"
        self.pidfile = self.node / "opensearch.pid"

    @property
    def url(self) -> str:
        return self.s.url

    @property
    def libtorch(self) -> Path:
        return self.dist / "libtorch"

    # -- Java -----------------------------------------------------------------------------------------
    def java_range(self) -> tuple[int, int | None]:
        """The Java majors this version runs on: (lowest, highest or None)."""
        major = int(self.s.version.split(".")[0])
        return (21, None) if major >= 3 else (11, 23)

    def java_home(self) -> Path:
        """The newest JDK in :meth:`java_range`: the configured one, ``OPENSEARCH_JAVA_HOME``, ``JAVA_HOME``, or one
        under /usr/lib/jvm. A :class:`ClusterError` saying what to install when there is none."""
        low, high = self.java_range()
        candidates: list[Path] = []
        if self.s.java_home:
            candidates.append(self.s.java_home)
        for var in ("OPENSEARCH_JAVA_HOME", "JAVA_HOME"):
            if os.environ.get(var):
                candidates.append(Path(os.environ[var]))
        jvm = Path("/usr/lib/jvm")
        if jvm.is_dir():
            candidates += sorted((p for p in jvm.iterdir() if p.is_dir() and not p.is_symlink()),
                                 key=java_major, reverse=True)
        if self.s.java_home:  # the user's choice is used or refused, never silently replaced
            candidates = candidates[:1]
        found = [(c, java_major(c)) for c in candidates if (c / "bin" / "java").exists()]
        for home, major in found:
            if major >= low and (high is None or major <= high):
                return home
        wanted = f"Java {low} to {high}" if high else f"Java {low} or newer"
        why = " (2.x installs a Java Security Manager, which Java 24 removed)" if high else ""
        seen = ", ".join(f"{h} (Java {m or '?'})" for h, m in found) or "no JDK"
        raise ClusterError(
            f"OpenSearch {self.s.version} needs {wanted}{why}; found {seen}",
            hint=f"install one (e.g. `apt-get install openjdk-{21 if high is None else 17}-jdk-headless`) or set "
                 "ESDISTILL_OS_LOCAL_JAVA_HOME to its folder",
        )

    # -- assembly -------------------------------------------------------------------------------------
    def _marker(self) -> dict:
        return {"recipe": RECIPE, "version": self.s.version, "plugins": list(PLUGINS), "modules": sorted(MODULES),
                "libtorch": ":".join(LIBTORCH), "djl_jni": ":".join(DJL_JNI)}

    def assembled(self) -> bool:
        try:
            return json.loads((self.dist / "esdistill-assembly.json").read_text()) == self._marker()
        except (OSError, ValueError):
            return False

    def assemble(self, java: Path | None = None, progress=None) -> Path:
        """The assembled distribution folder, built the first time (downloads with Maven, module rebuild, plugin
        installs, libtorch). Reused while its marker matches this recipe."""
        if self.assembled():
            return self.dist
        java = java or self.java_home()
        say = progress or (lambda msg: None)
        self.dist.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dist.parent, prefix=f".build-opensearch-{self.s.version}."))
        try:
            say(f"fetching OpenSearch {self.s.version}, its plugins and libtorch with Maven")
            files = self._fetch(tmp / "fetch")
            say("assembling the node")
            dist = tmp / f"opensearch-{self.s.version}"
            with zipfile.ZipFile(files["dist"]) as zf:
                zf.extractall(tmp)
            for f in (dist / "bin").iterdir():  # zipfile drops the exec bits
                f.chmod(0o755)
            self._modules(dist, files["modules"])
            self._plugins(dist, files["plugins"], java)
            lt = dist / "libtorch"
            lt.mkdir()
            _extract(files["libtorch"], f"pytorch/cpu/{LIBTORCH[3]}/", lt)
            _extract(files["djl_jni"], "jnilib/linux-x86_64/cpu/libdjl_torch.so", lt)
            if not (lt / "libdjl_torch.so").exists() or not list(lt.glob("libtorch*.so")):
                raise ClusterError(f"libtorch or DJL's JNI missing from {files['libtorch']} / {files['djl_jni']}")
            (dist / "esdistill-assembly.json").write_text(json.dumps(self._marker(), indent=1) + "\n")
            for path in [dist, *dist.rglob("*")]:  # readable by the user that runs the node
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
            if self.assembled():  # another process published one meanwhile (and may run it): ours is dropped
                return self.dist
            if self.dist.exists():  # a folder of another recipe: replaced
                shutil.rmtree(self.dist)
            try:
                dist.rename(self.dist)
            except OSError:  # another process published it first
                if not self.assembled():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        os.chmod(self.home, 0o755)
        os.chmod(self.dist.parent, 0o755)
        return self.dist

    def _fetch(self, work: Path) -> dict:
        """Everything :func:`artifacts` names, in one Maven run over a generated multi-module POM: one module copies
        the zips and jars themselves (no transitive dependencies), one per rebuilt module its jar with its runtime
        dependencies. A refused artifact is a :class:`ClusterError` naming its coordinates."""
        if not shutil.which("mvn"):
            raise ClusterError("Maven (mvn) is needed to fetch OpenSearch from Maven Central",
                               hint="install it (`apt-get install maven`)")
        v, pv = self.s.version, f"{self.s.version}.0"

        def dep(g: str, a: str, ver: str, typ: str = "jar", cls: str | None = None) -> str:
            return (f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{ver}</version>"
                    f"<type>{typ}</type>{f'<classifier>{cls}</classifier>' if cls else ''}</dependency>")

        def pom(aid: str, deps: list[str], extra: str = "", modules: list[str] | None = None) -> str:
            mods = "".join(f"<module>{m}</module>" for m in modules or [])
            return ('<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
                    f"<groupId>esdistill.opensearch</groupId><artifactId>{aid}</artifactId><version>1</version>"
                    f"<packaging>pom</packaging>{f'<modules>{mods}</modules>' if mods else ''}"
                    f"<dependencies>{''.join(deps)}</dependencies>{extra}</project>")

        no_transitive = ("<build><plugins><plugin><groupId>org.apache.maven.plugins</groupId>"
                         "<artifactId>maven-dependency-plugin</artifactId><configuration>"
                         "<excludeTransitive>true</excludeTransitive></configuration></plugin></plugins></build>")
        direct = [dep("org.opensearch.distribution.integ-test-zip", "opensearch", v, "zip"),
                  *(dep("org.opensearch.plugin", p, pv, "zip") for p in PLUGINS),
                  dep(LIBTORCH[0], LIBTORCH[1], LIBTORCH[2], "jar", LIBTORCH[3]),
                  dep(*DJL_JNI)]
        (work / "direct").mkdir(parents=True)
        (work / "direct" / "pom.xml").write_text(pom("direct", direct, no_transitive))
        for name, (art, _, _) in MODULES.items():
            (work / name).mkdir()
            (work / name / "pom.xml").write_text(pom(name, [dep("org.opensearch.plugin", art, v)]))
        (work / "pom.xml").write_text(pom("assembly", [], modules=["direct", *MODULES]))
        extra = shlex.split(os.environ.get("ESDISTILL_MAVEN_ARGS", ""))
        cmd = ["mvn", "-q", "-B", "-U", "-Dstyle.color=never", *extra, "dependency:copy-dependencies",
               "-DincludeScope=runtime"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        if proc.returncode != 0:
            text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
            refused = re.findall(r"([\w.-]+:[\w.-]+:(?:zip|jar)(?::[\w.-]+)?:[\w.-]+)", text)
            errors = [ln.replace("[ERROR]", "").strip() for ln in text.splitlines()
                      if "[ERROR]" in ln and ln.replace("[ERROR]", "").strip()][:2]
            what = (f"Maven could not resolve {', '.join(sorted(set(refused)))}" if refused
                    else " | ".join(e[:500] for e in errors) or text[-1500:])
            raise ClusterError(
                f"could not fetch OpenSearch {v} from your Maven repositories (Maven Central, or the mirror your "
                f"~/.m2/settings.xml names): {what}",
                hint="check the version (ESDISTILL_OS_LOCAL_VERSION; its plugins must exist as <version>.0) and that "
                     "the mirror serves (or proxies Maven Central for) org.opensearch and ai.djl.pytorch; "
                     "ESDISTILL_MAVEN_ARGS passes arguments to mvn (e.g. -s settings.xml)",
            )
        got = work / "direct" / "target" / "dependency"
        files = {"dist": got / f"opensearch-{v}.zip",
                 "plugins": [got / f"{p}-{pv}.zip" for p in PLUGINS],
                 "libtorch": got / f"{LIBTORCH[1]}-{LIBTORCH[2]}-{LIBTORCH[3]}.jar",
                 "djl_jni": got / f"{DJL_JNI[1]}-{DJL_JNI[2]}.jar",
                 "modules": {name: work / name / "target" / "dependency" for name in MODULES}}
        missing = [p for p in [files["dist"], *files["plugins"], files["libtorch"], files["djl_jni"],
                               *files["modules"].values()] if not p.exists()]
        if missing:
            raise ClusterError(f"Maven finished but did not deliver {', '.join(p.name for p in missing)}",
                               hint=f"check mvn's output in {work}")
        return files

    def _modules(self, dist: Path, jars: dict[str, Path]) -> None:
        """``modules/<name>/``: the module's jars (those not already in ``lib/``) and its plugin descriptor — for
        each module the distribution lacks (2.x's integ-test zip has only transport-netty4; 3.x's has them all)."""
        v = self.s.version
        lib = {p.name for p in (dist / "lib").iterdir()}
        for name, (_, cls, extended) in MODULES.items():
            out = dist / "modules" / name
            if out.exists():
                continue
            out.mkdir(parents=True)
            for jar in sorted(jars[name].glob("*.jar")):
                if jar.name not in lib:
                    shutil.copy(jar, out / jar.name)
            (out / "plugin-descriptor.properties").write_text(
                f"description={name}\nversion={v}\nname={name}\nclassname={cls}\njava.version=11\n"
                f"opensearch.version={v}\nextended.plugins={extended}\nhas.native.controller=false\n")
            if name == "lang-painless":
                (out / "plugin-security.policy").write_text(_PAINLESS_POLICY)

    def _plugins(self, dist: Path, zips: list[Path], java: Path) -> None:
        env = dict(os.environ, OPENSEARCH_JAVA_HOME=str(java), JAVA_HOME=str(java),
                   OPENSEARCH_PATH_CONF=str(dist / "config"))
        env.pop("OPENSEARCH_JAVA_OPTS", None)
        for z in zips:
            proc = subprocess.run([str(dist / "bin" / "opensearch-plugin"), "install", "--batch", z.as_uri()],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise ClusterError(f"installing the plugin {z.name} failed (exit {proc.returncode}):\n"
                                   f"{(proc.stdout + proc.stderr)[-2000:]}")

    # -- the node -------------------------------------------------------------------------------------
    def _run_user(self) -> str | None:
        """The user that runs the node: the dedicated system user when we are root, else ourselves (None)."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(self.s.user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.s.user],
                           check=True)
        return self.s.user

    @property
    def transport_port(self) -> int:
        return self.s.transport_port or self.s.port + 100

    def configure(self) -> None:
        """The node's config folder (the distribution's, with plugin configs), rewritten at every start: single
        node on loopback, no security plugin, ml-commons allowed on this data node, libtorch from disk."""
        for sub in ("config", "data", "logs", "tmp"):
            (self.node / sub).mkdir(parents=True, exist_ok=True)
        conf = self.node / "config"
        shutil.copytree(self.dist / "config", conf, dirs_exist_ok=True)
        # bin/opensearch runs from the (read-only) distribution folder: the relative log and dump paths of its
        # jvm.options would point there, so they are made the node's own
        jvm = (self.dist / "config" / "jvm.options").read_text()
        jvm = jvm.replace("logs/", f"{self.node / 'logs'}/").replace("HeapDumpPath=data",
                                                                      f"HeapDumpPath={self.node / 'data'}")
        (conf / "jvm.options").write_text(jvm)
        (conf / "jvm.options.d").mkdir(exist_ok=True)
        (conf / "jvm.options.d" / "esdistill.options").write_text(
            f"-Xms{self.s.heap}\n-Xmx{self.s.heap}\n-DPYTORCH_LIBRARY_PATH={self.libtorch}\n")
        settings = {
            "cluster.name": "esdistill-opensearch",
            "node.name": "esdistill-node",
            "discovery.type": "single-node",
            "network.host": "127.0.0.1",
            "http.port": self.s.port,
            "transport.port": self.transport_port,
            "path.data": self.node / "data",
            "path.logs": self.node / "logs",
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            "action.destructive_requires_name": "false",
            "plugins.ml_commons.only_run_on_ml_node": "false",
            "plugins.ml_commons.allow_registering_model_via_url": "true",
            "plugins.ml_commons.allow_registering_model_via_local_file": "true",
            "plugins.ml_commons.native_memory_threshold": 100,
            "plugins.ml_commons.jvm_heap_memory_threshold": 100,
            "plugins.ml_commons.model_access_control_enabled": "false",
            **self.s.extra_settings,
        }
        (conf / "opensearch.yml").write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
        user = self._run_user()
        if user:
            pw = pwd.getpwnam(user)
            for path in [self.node, *self.node.rglob("*")]:
                os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)

    def share_file(self, path: Path) -> Path:
        """A copy of ``path`` that the node's process can read (``<node>/uploads/``), e.g. a model zip that
        ml-commons registers from a ``file://`` URL. Returns the copy's path."""
        out = self.node / "uploads"
        out.mkdir(parents=True, exist_ok=True)
        out.chmod(0o755)
        dst = out / Path(path).name
        shutil.copyfile(path, dst)
        dst.chmod(0o644)
        return dst

    def _pid(self) -> int | None:
        """The node's process id: from its pid file, or (while it starts: ``bin/opensearch -d`` returns before the
        JVM writes that file) the java process that runs with this node's config folder."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return self._find_pid()
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def _find_pid(self) -> int | None:
        mark = f"-Dopensearch.path.conf={self.node / 'config'}".encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if mark in (proc / "cmdline").read_bytes().split(b"\0"):
                        return int(proc.name)
                except OSError:
                    continue
        return None

    def info(self, timeout: float = 2.0) -> dict | None:
        """``GET /`` of whatever answers on the port (None when nothing does)."""
        import requests

        try:
            r = requests.get(self.s.url, timeout=timeout)
            return r.json() if r.ok else {"status": r.status_code}
        except (requests.RequestException, ValueError):
            return None

    def _health(self, timeout: float = 2.0) -> str | None:
        import requests

        try:
            r = requests.get(f"{self.s.url}/_cluster/health", timeout=timeout)
            return r.json().get("status") if r.ok else None
        except (requests.RequestException, ValueError):
            return None

    def status(self) -> OpenSearchStatus:
        pid = self._pid()
        health = self._health() if pid else None
        return OpenSearchStatus(pid is not None and health is not None, self.s.url, pid, self.s.version, self.home,
                                health)

    def memory_rss(self) -> int | None:
        """The node process's resident memory in bytes (None when it does not run)."""
        pid = self._pid()
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()) if pid else None
        except OSError:
            return None
        return int(m.group(1)) * 1024 if m else None

    def start(self, timeout: float = 180.0, progress=None) -> OpenSearchStatus:
        """Start the node (assembling and configuring it first) and wait until its health is yellow or green."""
        st = self.status()
        if st.running:
            return st
        if st.pid is not None:  # this node is still starting (another start is waiting for it): wait with it
            return self._wait_healthy(timeout, self.node / "startup.log",
                                      self.node / "logs" / "esdistill-opensearch.log")
        for port, what in ((self.s.port, "HTTP"), (self.transport_port, "transport")):
            if not _port_free(port):
                who = self.info() if what == "HTTP" else None
                ver = (who or {}).get("version") or {}
                name = (f" (by {ver.get('distribution', 'elasticsearch')} {ver.get('number', '')})"
                        if ver else " (by an HTTP server)" if who else "")
                raise ClusterError(
                    f"port {port} on 127.0.0.1 (OpenSearch's {what} port) is already in use{name}",
                    hint="stop what uses it, or pick another port with ESDISTILL_OS_LOCAL_PORT "
                         "(and ESDISTILL_OS_LOCAL_TRANSPORT_PORT; default: the HTTP port + 100)")
        java = self.java_home()
        self.assemble(java, progress=progress)
        self.configure()
        if progress:
            progress(f"starting OpenSearch {self.s.version} on {self.s.url}")
        run_env = {"OPENSEARCH_JAVA_HOME": str(java), "OPENSEARCH_PATH_CONF": str(self.node / "config"),
                   "OPENSEARCH_TMPDIR": str(self.node / "tmp"), "HOME": str(self.node)}
        env = dict(os.environ, **run_env)
        for var in ("JAVA_HOME", "OPENSEARCH_JAVA_OPTS", "JAVA_TOOL_OPTIONS"):
            env.pop(var, None)
        cmd = [str(self.dist / "bin" / "opensearch"), "-d", "-p", str(self.pidfile)]
        user = self._run_user()
        if user:  # runuser drops the environment: the variables the node needs are passed explicitly
            cmd = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in run_env.items()), *cmd]
        log = self.node / "startup.log"
        server_log = self.node / "logs" / "esdistill-opensearch.log"
        with open(log, "wb") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.node,
                                  stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise ClusterError(f"OpenSearch failed to start (exit {proc.returncode}); {log}:\n"
                               f"{_tail(log)}\n{server_log}:\n{_tail(server_log)}")
        return self._wait_healthy(timeout, log, server_log)

    def _wait_healthy(self, timeout: float, log: Path, server_log: Path) -> OpenSearchStatus:
        begin = time.monotonic()
        while time.monotonic() < begin + timeout:
            if self._health() in ("yellow", "green"):
                return self.status()
            if self._pid() is None and time.monotonic() > begin + 5:
                raise ClusterError(f"OpenSearch exited during start-up{_reason(server_log)}; the end of "
                                   f"{server_log}:\n{_tail(server_log)}\nthe end of {log}:\n{_tail(log, 10)}")
            time.sleep(1.0)
        self.stop()  # no half-started JVM left behind
        raise ClusterError(f"OpenSearch did not become healthy within {timeout:.0f}s (stopped it); the end of "
                           f"{server_log}:\n{_tail(server_log)}",
                           hint="a loaded machine can need longer: `esdistill cluster start --timeout`")

    def stop(self, timeout: float = 60.0) -> bool:
        """SIGTERM the node and wait for it to exit (SIGKILL after ``timeout``). False if it was not running."""
        return stop_node(self._pid, self.pidfile, timeout)


def _extract(jar: Path, prefix: str, out: Path) -> None:
    """The members of ``jar`` under ``prefix`` (or the one member named ``prefix``), flattened into ``out``."""
    with zipfile.ZipFile(jar) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            with zf.open(info) as src, open(out / Path(info.filename).name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reason(log: Path) -> str:
    """``: <the last exception message>`` of a node's log (what made it stop), or nothing."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    causes = [ln.strip() for ln in lines if re.match(r"^(Caused by: |[\w.$]+(Exception|Error): )", ln.strip())]
    return f": {causes[-1][:500]}" if causes else ""
