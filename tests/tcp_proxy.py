"""A threaded TCP forwarder on 127.0.0.1 that tests can cut, to simulate an unreachable server.

    with ProxyProcess(emulator.port) as proxy: # proxy.host == "http://127.0.0.1:PORT"
        ...                                    # traffic to PORT goes to the emulator
        proxy.stop()                           # refused: listener and open connections closed
        proxy.start()                          # listening again, on the same port

`TcpProxy` is the forwarder (daemon threads; `stop()` joins them all). `ProxyProcess` runs
one in a child process (`python tcp_proxy.py TARGET_PORT`, commands on its stdin) and is what
tests in the same process as pyarrow should use: some pyarrow GCS reads block in the network
while holding the GIL, so a forwarder thread in that process could never answer them. The
child is stopped by its own PID when the `with` block ends; nothing is left running.
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import threading

POLL_S = 0.1
CONNECT_TIMEOUT_S = 5.0
CHUNK = 65536


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0):
        self.target = (target_host, target_port)
        self.port = port  # 0: a free port, chosen at the first start() and kept
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._pumps: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()
        self.connections = 0  # accepted so far, over all starts

    @property
    def host(self) -> str:
        """`http://127.0.0.1:PORT`, e.g. for STORAGE_EMULATOR_HOST."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> TcpProxy:
        """Listens (again) on `self.port`."""
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        listener.settimeout(POLL_S)
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"tcp-proxy-{self.port}", daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Closes the listener and every open connection; joins every thread."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, pumps = list(self._sockets), list(self._pumps)
        for sock in sockets:
            _close(sock)
        for pump in pumps:
            pump.join()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        listener = self._listener
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self.connections += 1
            pump = threading.Thread(target=self._pump, args=(client,), name="tcp-proxy-conn", daemon=True)
            with self._lock:
                self._sockets.add(client)
                self._pumps.add(pump)
            pump.start()

    def _pump(self, client: socket.socket) -> None:
        upstream = None
        try:
            try:
                upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
            except OSError:
                return
            upstream.settimeout(None)
            with self._lock:
                self._sockets.add(upstream)
            peer = {client: upstream, upstream: client}
            with selectors.DefaultSelector() as selector:
                selector.register(client, selectors.EVENT_READ)
                selector.register(upstream, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    for key, _ in selector.select(POLL_S):
                        data = key.fileobj.recv(CHUNK)
                        if not data:  # one side closed: close both
                            return
                        peer[key.fileobj].sendall(data)
        except (OSError, ValueError):  # a socket closed by stop() or by the peer
            return
        finally:
            with self._lock:
                for sock in (client, upstream):
                    if sock is not None:
                        self._sockets.discard(sock)
                self._pumps.discard(threading.current_thread())
            for sock in (client, upstream):
                if sock is not None:
                    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class ProxyProcess:
    """A TcpProxy in a child process, with the same start/stop/host/port/connections."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = 0
        self._proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self, line: str) -> str:
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"tcp proxy process exited ({self._proc.poll()}) on {line!r}")
        return answer

    def start(self) -> ProxyProcess:
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, __file__, str(self.target[1]), self.target[0]],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            ready = self._proc.stdout.readline().split()
            if not ready or ready[0] != "ready":
                self.close()
                raise RuntimeError("tcp proxy process did not start")
            self.port = int(ready[1])
        else:
            self._command("start")
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._command("stop")

    @property
    def connections(self) -> int:
        return int(self._command("connections"))

    def close(self) -> None:
        """Stops the child (EOF on its stdin, then SIGKILL if it lingers) and waits for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(target_port: int, target_host: str) -> None:
    """The child of ProxyProcess: start/stop/connections on stdin, one answer line each."""
    proxy = TcpProxy(target_port, target_host).start()
    print("ready", proxy.port, flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "start":
                proxy.start()
                print("ok", flush=True)
            elif command == "stop":
                proxy.stop()
                print("ok", flush=True)
            elif command == "connections":
                print(proxy.connections, flush=True)
            else:
                print(f"unknown command {command!r}", flush=True)
    finally:
        proxy.stop()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1")
