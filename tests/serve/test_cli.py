"""``unetseg serve`` from the command line: a real server process, its token file, its warnings and its
graceful shutdown."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from inference.helpers import make_checkpoint
from reliability.helpers import assert_refused, run_inprocess
from serve.helpers import TOKEN, wait_for
from unetseg.serve.server import exposure_warning, is_loopback


def _read_line(stream, seconds: float = 120.0) -> str:
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    assert line, "no output from the server"
    return line[0]


def test_sigterm_stops_accepting_and_finishes_the_request_in_flight(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "unetseg", "serve", "--checkpoint", str(ckpt), "--port", "0",
         "--device", "cpu", "--token-file", str(token), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _read_line(proc.stdout)
        url = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        assert url, line  # loopback by default
        client = httpx.Client(base_url=url[1], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        wait_for(lambda: _healthy(client), 120)
        buffer = io.BytesIO()
        image = (np.random.default_rng(0).random((1536, 1536)) * 255).astype(np.uint8)
        Image.fromarray(image).save(buffer, format="PNG")  # a few seconds with 16-pixel tiles
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(client.post, "/predict", content=buffer.getvalue())
            wait_for(lambda: client.get("/health").json()["running"] == 1)
            proc.send_signal(signal.SIGTERM)
            wait_for(lambda: not _accepts(url[1]), 30)  # no new connections ...
            assert not slow.done()
            answer = slow.result()  # ... but the request in flight is answered
        assert answer.status_code == 200
        assert np.asarray(Image.open(io.BytesIO(answer.content))).shape == (1536, 1536)
        assert proc.wait(60) == -signal.SIGTERM
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/health").status_code == 200
    except httpx.TransportError:
        return False


def _accepts(url: str) -> bool:
    """Answered, not refused: a connection the kernel queued while the listener closed is reset or closed
    unanswered, which is not being accepted either."""
    try:
        httpx.get(f"{url}/health", timeout=5)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return False
    return True


def test_the_token_comes_from_a_file_never_the_command_line_and_bad_options_are_one_line(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    short = tmp_path / "short"
    short.write_text("abc\n")
    code, err = run_inprocess("serve", "--checkpoint", ckpt, "--token-file", short, capsys=capsys)
    assert_refused(code, err, str(short), "at least 16 characters")
    missing = tmp_path / "missing"
    code, err = run_inprocess("serve", "--checkpoint", ckpt, "--token-file", missing, capsys=capsys)
    assert_refused(code, err, "cannot read the token file")
    code, err = run_inprocess("serve", "--checkpoint", ckpt, "--token-file", tmp_path, capsys=capsys)
    assert_refused(code, err, "not a regular file")
    code, err = run_inprocess("serve", "--checkpoint", ckpt, "--token", TOKEN, capsys=capsys)
    assert_refused(code, err, "--token")
    code, err = run_inprocess("serve", "--checkpoint", ckpt, "--queue-size", "0", capsys=capsys)
    assert_refused(code, err, "--queue-size")
    code, err = run_inprocess("serve", "--checkpoint", ckpt, "--log-level", "loud", capsys=capsys)
    assert_refused(code, err, "--log-level loud")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        code, err = run_inprocess("serve", "--checkpoint", ckpt, "--port", port, capsys=capsys)
    assert_refused(code, err, f"--port {port}: cannot listen")


def test_other_addresses_than_loopback_are_warned_about_loudly():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("no-such-host.invalid")
    assert exposure_warning("127.0.0.1", None) is None
    loud = exposure_warning("0.0.0.0", None)
    assert loud is not None and "WITHOUT A TOKEN" in loud and "--token-file" in loud
    quiet = exposure_warning("0.0.0.0", TOKEN)
    assert quiet is not None and "clear text" in quiet and TOKEN not in quiet


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_help_needs_no_web_framework(argv):
    code = ("import sys; from unetseg.cli.commands import run; run(sys.argv[1:]); "
            "assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout
