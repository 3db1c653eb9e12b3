"""What the CLI's tests share (tests/cli/): `jobcast` run in the background, a proxy whose
connections the test cuts, and the lines a sqrt job prints."""

from __future__ import annotations

import math
import socket
import subprocess
import threading

from tests.support.services import JOBCAST, ROOT, service_env


def sqrt_lines(n: int) -> list[str]:
    """What `jobcast follow` prints of a sqrt job of ``n`` values."""
    return ["{}".format(math.sqrt(i)) for i in range(n)]


class CuttableProxy:
    """A TCP proxy in front of the web server whose connections the test can cut at will."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self.refused = 0
        self.refusing = False
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                self.refused += 1
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.accepted += 1
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    # shutdown wakes the pump blocked in recv (close alone would not).
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
        return len(pairs)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()


class Run:
    """`jobcast ARGS` in the background; stdout lines and stderr are collected as they come."""

    def __init__(self, redis_url: str, *args: str, **env: str):
        self.proc = subprocess.Popen([*JOBCAST, *args], cwd=ROOT, env=service_env(redis_url, **env),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()

    def _read_out(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.err_lines.append(line)

    @property
    def err(self) -> str:
        """What it wrote on stderr so far (all of it, once :meth:`wait` has returned)."""
        return "".join(self.err_lines)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._out.join(5)
        self._err.join(5)
        return code
