"""``unetseg serve``: load the model once, listen (loopback by default), run uvicorn until SIGINT/SIGTERM.

On a signal uvicorn stops accepting connections, answers every request in flight (queued ones included),
then the batcher's worker stops: a graceful shutdown. A second Ctrl-C forces the exit.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from unetseg.errors import ConfigError
from unetseg.serve.settings import Limits

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def read_token(path: str | Path) -> str:
    """The bearer token: the first line of ``path``, stripped (a token is never given on the command line,
    where other users of the machine can read it in the process list)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{p}: the token file is not a regular file")
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the token file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: the token file is not UTF-8 text") from None
    token = (text.strip().splitlines() or [""])[0].strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ConfigError(f"{p}: the token must be one line of at least 16 characters without spaces "
                          "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: {p} can be read by other users; chmod 600 it", file=sys.stderr)
    return token


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning for a server others can reach: loud without a token, a reminder about TLS with one."""
    if is_loopback(host):
        return None
    if token is None:
        bar = "!" * 100
        return (f"{bar}\nWARNING: listening on {host}, NOT loopback, WITHOUT A TOKEN: anyone who can reach "
                "this machine can\nrun the model on its CPU/GPU and read /model. Give --token-file FILE, and "
                f"put TLS in front (a reverse proxy).\n{bar}")
    return (f"note: listening on {host}: the bearer token travels in clear text over plain HTTP; "
            "put TLS in front (a reverse proxy)")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
    except OSError as e:
        raise ConfigError(f"--host {host} --port {port}: cannot listen ({e.strerror or e})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def run(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
        token_file: str | Path | None = None, limits: Limits | None = None, device: str = "auto",
        precision: str = "auto", trust_torchscript: bool = False, tile: Sequence[int] | None = None,
        overlap: float | None = None, tta: bool | None = None, batch_size: int | None = None,
        blend: str | None = None, log_level: str = "info") -> None:
    """Serve ``checkpoint`` (a run or checkpoint folder, an ``.onnx`` file, a package ``unetseg.load``
    reads) until SIGINT/SIGTERM, within ``limits`` (:class:`Limits`); the rest as :func:`unetseg.load`."""
    import uvicorn

    from unetseg.inference.segmenter import load
    from unetseg.serve.app import create_app

    if log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level {log_level}: expected one of {' | '.join(LOG_LEVELS)}")
    token = read_token(token_file) if token_file is not None else None
    warning = exposure_warning(host, token)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    sock = listen(host, port)  # before the model loads: a busy port is known at once
    try:
        seg = load(checkpoint, device=device, precision=precision, trust_torchscript=trust_torchscript,
                   tile=tile, overlap=overlap, tta=tta, batch_size=batch_size, blend=blend)
        app = create_app(seg, limits=limits, token=token)
    except BaseException:
        sock.close()
        raise
    print(f"unetseg serve: {seg} on {url_of(sock)} (pid {os.getpid()}; Ctrl-C stops after the requests in "
          "flight)", flush=True)
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", server_header=False,
                            timeout_graceful_shutdown=None)
    uvicorn.Server(config).run(sockets=[sock])
