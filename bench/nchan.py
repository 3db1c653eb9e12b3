"""Nchan, the C anchor of the fan-out benchmark: nginx with Debian's nchan module.

    .venv/bin/python -m bench.nchan            # start one on a free port, print its URLs, wait for Ctrl-C

One nginx master and ONE worker process, Nchan's memory store (no Redis), bound to 127.0.0.1
on a free port, with its own temporary prefix for the generated nginx.conf, pid file, logs
and temp paths: /etc/nginx and Debian's /var paths are never read or written. The module is
``load_module``-ed from Debian's path (package ``libnginx-mod-nchan``).

A job is a channel (its id). Locations:

- ``POST /pub/<channel>``: the publisher (``nchan_publisher``); the bench producer POSTs each
  value there on one keep-alive connection. ``DELETE`` ends the channel and its subscribers.
- ``GET /sub/sse/<channel>``: EventSource (``nchan_subscriber eventsource``): each value comes
  as ``id: <msgid>`` and ``data: <value>``.
- ``GET /sub/text/<channel>``: ``http-raw-stream``, each value followed by ``"\\n"``
  (``nchan_subscriber_http_raw_stream_separator``): the equivalent of Jobcast's text stream.
- ``GET /readyz``: 200 once nginx answers; ``GET /nchan_status``: ``nchan_stub_status``
  (its ``subscribers:`` line is the viewer count).

Subscribers start at the oldest message the channel still buffers
(``nchan_subscriber_first_message oldest``, a buffer longer than any scenario produces), so a
newcomer reads the history first, as Jobcast's viewers do: the same work, and a loss that can
be counted in the connect-storm scenarios.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.procs import children
from jobcast.core.wait import wait_until
from jobcast.launcher.redisserver import free_port

# Where Debian's packages put nginx and the module (libnginx-mod-nchan), in order of preference.
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/usr/local/nginx/modules")
MODULE_NAME = "ngx_nchan_module.so"
MODULE_CONF = "/usr/share/nginx/modules-available/mod-nchan.conf"
INSTALL_HINT = ("Nchan needs nginx and Debian's nchan module: "
                "apt-get install nginx libnginx-mod-nchan (or `make bench`, which installs them)")
# More than any scenario produces on one channel (fan100: 500 values, storm100: 600).
MESSAGE_BUFFER = 10_000


class NchanMissing(RuntimeError):
    """nginx or the nchan module is not installed."""


def nginx_binary() -> str:
    """The nginx executable, or NchanMissing."""
    found = shutil.which("nginx")
    if found:
        return found
    for path in NGINX_PATHS:
        if os.access(path, os.X_OK):
            return path
    raise NchanMissing(f"nginx not found. {INSTALL_HINT}")


def module_path() -> str:
    """The nchan module's .so, or NchanMissing.

    Debian's ``mod-nchan.conf`` names it relative to nginx's prefix (``modules/…``, i.e.
    /usr/lib/nginx/modules); the directories are searched as well.
    """
    candidates = [os.path.join(d, MODULE_NAME) for d in MODULE_DIRS]
    try:
        m = re.search(r"load_module\s+(\S+);", Path(MODULE_CONF).read_text())
        if m:
            named = m.group(1)
            candidates.insert(0, named if named.startswith("/") else os.path.join("/usr/lib/nginx", named))
    except OSError:
        pass
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise NchanMissing(f"{MODULE_NAME} not found in {', '.join(MODULE_DIRS)}. {INSTALL_HINT}")


def versions() -> str:
    """``nginx 1.22.1, nchan 1.3.6`` (the package's version when dpkg knows it)."""
    try:
        out = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, timeout=10)
        nginx = out.stderr.strip().split("/")[-1]
    except (OSError, NchanMissing, subprocess.SubprocessError):
        nginx = "?"
    nchan = "?"
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout:
            nchan = out.stdout.split(":")[-1].split("+")[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"nginx {nginx}, nchan {nchan}"


def config(prefix: Path, port: int, module: str, connections: int) -> str:
    """The generated nginx.conf: one worker, memory store, everything under ``prefix``.

    The worker may open as many files as the benchmark's processes may (the hard
    ``RLIMIT_NOFILE``), and hold ``connections`` connections within that.
    """
    p = str(prefix)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    files = 65536 if hard == resource.RLIM_INFINITY else hard
    connections = min(connections, files - 100)
    user = "user root;\n" if os.geteuid() == 0 else ""  # as the other servers run; ignored otherwise
    return f"""\
# Generated by bench/nchan.py for the fan-out benchmark; never /etc/nginx.
load_module {module};
{user}worker_processes 1;
worker_rlimit_nofile {files};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{
    worker_connections {connections};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    tcp_nodelay on;
    nchan_max_reserved_memory 512M;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        nchan_message_buffer_length {MESSAGE_BUFFER};
        nchan_message_timeout 1h;
        nchan_subscriber_first_message oldest;
        nchan_subscriber_timeout 0;
        location = /readyz {{ return 200 "ok\\n"; }}
        location = /nchan_status {{ nchan_stub_status; }}
        location ~ ^/pub/([\\w-]+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
        }}
        location ~ ^/sub/sse/([\\w-]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
        }}
        location ~ ^/sub/text/([\\w-]+)$ {{
            nchan_subscriber http-raw-stream;
            nchan_subscriber_http_raw_stream_separator "\\n";
            nchan_channel_id $1;
        }}
    }}
}}
"""


class Nchan:
    """nginx + nchan on a free port of 127.0.0.1, in a temporary prefix of its own."""

    def __init__(self, log_path: Path | None = None, connections: int = 30000):
        self.binary = nginx_binary()
        self.module = module_path()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = Path(tempfile.mkdtemp(prefix="jobcast-bench-nchan-"))
        (self.prefix / "tmp").mkdir()
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(config(self.prefix, self.port, self.module, connections))
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        return [self.binary, "-p", f"{self.prefix}/", "-c", str(self.conf),
                "-e", str(self.prefix / "error.log"), "-g", "daemon off;"]

    def start(self, timeout: float = 30.0) -> "Nchan":
        """Start nginx in the foreground and wait for /readyz and its worker."""
        test = subprocess.run([*self.argv(), "-t", "-q"], capture_output=True, text=True)
        if test.returncode:
            conf = self.conf.read_text()
            shutil.rmtree(self.prefix, ignore_errors=True)
            raise RuntimeError(f"nginx -t failed: {test.stderr.strip()}\n{conf}")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=out, stdin=subprocess.DEVNULL)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.proc.returncode}); see {self.prefix}/error.log")
            try:
                return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(ready, timeout, interval=0.05, what="nginx /readyz")
            wait_until(lambda: bool(self.workers()), timeout, interval=0.05, what="nginx's worker")
        except BaseException:
            self.stop()
            raise
        return self

    def workers(self) -> list[int]:
        """The worker process(es): the master's children."""
        return children(self.proc.pid) if self.proc else []

    def status(self) -> dict[str, int]:
        """``nchan_stub_status`` as numbers (``subscribers``, ``channels``, ...)."""
        text = httpx.get(self.url + "/nchan_status", timeout=10).text
        out = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            try:
                out[key.strip().replace(" ", "_")] = int(value.strip().rstrip("K"))
            except ValueError:
                pass
        return out

    def subscribers(self) -> int:
        return self.status().get("subscribers", 0)

    def delete(self, channel: str) -> None:
        """End a channel: its subscribers' streams close (as a finished job's)."""
        httpx.delete(f"{self.url}/pub/{channel}", timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nginx: fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)


def main() -> int:
    n = Nchan().start()
    print(f"{versions()} on {n.url} (prefix {n.prefix}, master {n.proc.pid}, workers {n.workers()})")
    print(f"  publish:  curl -X POST --data 'i=0 t={time.time():.6f}' {n.url}/pub/CHANNEL")
    print(f"  SSE:      curl -N {n.url}/sub/sse/CHANNEL")
    print(f"  text:     curl -N {n.url}/sub/text/CHANNEL")
    try:
        n.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        n.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
