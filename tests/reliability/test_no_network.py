"The test session's network guard (tests/conftest.py, issue 15): outside connections fail, loopback and unix sockets work."
import os, socket, subprocess, sys, tempfile, threading
from pathlib import Path

import pytest

OUTSIDE = ("203.0.113.1", 80)   # TEST-NET-3: documentation only, never routed
MESSAGE = "gan_engine test guard: network access to"


def echo_server(family=socket.AF_INET, address=("127.0.0.1", 0)):
    "A one-connection echo server; returns (listening socket, address to connect to, thread)."
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind(address); srv.listen(1); srv.settimeout(10)
    def serve():
        try:
            conn, _ = srv.accept()
            with conn: conn.sendall(conn.recv(64))
        except OSError: pass
    t = threading.Thread(target=serve, daemon=True); t.start()
    return srv, srv.getsockname(), t


def test_outside_connections_fail_with_the_guards_message(network_attempts, network_guard):
    with pytest.raises(OSError, match=MESSAGE) as e: socket.create_connection(OUTSIDE, timeout=1)
    assert isinstance(e.value, network_guard.NetworkBlocked) and "203.0.113.1:80" in str(e.value)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        with pytest.raises(OSError, match=MESSAGE): s.connect(OUTSIDE)
        with pytest.raises(OSError, match=MESSAGE): s.connect_ex(OUTSIDE)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
        with pytest.raises(OSError, match=MESSAGE): s6.connect(("2001:db8::1", 80, 0, 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        with pytest.raises(OSError, match=MESSAGE): u.sendto(b"x", OUTSIDE)
    with pytest.raises(socket.gaierror, match=MESSAGE): socket.getaddrinfo("example.com", 443)   # no DNS query either
    with pytest.raises(socket.gaierror, match=MESSAGE): socket.gethostbyname("pypi.org")
    import urllib.request, urllib.error
    with pytest.raises((urllib.error.URLError, OSError), match="guard"): urllib.request.urlopen("http://203.0.113.1/", timeout=1)
    assert network_attempts.take() == ["203.0.113.1:80"] * 3 + ["2001:db8::1:80", "203.0.113.1:80", "example.com",
                                       "pypi.org", "203.0.113.1:80"]   # each one logged (and accepted here)


def test_swallowed_attempt_still_fails_the_test(tmp_path):
    "A library that catches the OSError and falls back quietly does not hide the attempt: the test fails."
    conftest = Path(__file__).resolve().parents[1] / "conftest.py"
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    (tmp_path / "test_quiet.py").write_text(
        "import socket\n"
        "def test_quiet():\n"
        "    try: socket.create_connection(('203.0.113.1', 80), timeout=1)\n"
        "    except OSError: pass   # an 'offline fallback'\n"
        "def test_local():\n"
        "    socket.getaddrinfo('localhost', 80)\n")
    r = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path), "-p", "no:cacheprovider", "-q", "-o", "addopts=",
                        "--rootdir", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})   # (the plugins take seconds to load)
    assert r.returncode == 1 and "1 failed, 1 passed" in r.stdout, r.stdout[-3000:]
    assert "this test tried to use the network: 203.0.113.1:80" in r.stdout


def test_loopback_and_unix_sockets_still_work(network_guard):
    for host, family in (("127.0.0.1", socket.AF_INET), ("localhost", socket.AF_INET)):
        srv, (_, port), t = echo_server(family)
        with srv, socket.create_connection((host, port), timeout=5) as c:
            c.sendall(b"ping"); assert c.recv(64) == b"ping"
        t.join(5)
    if socket.has_ipv6:
        try: srv, addr, t = echo_server(socket.AF_INET6, ("::1", 0))
        except OSError: pass   # no IPv6 loopback in this container
        else:
            with srv, socket.socket(socket.AF_INET6) as c:
                c.settimeout(5); c.connect(addr[:2]); c.sendall(b"six"); assert c.recv(64) == b"six"
            t.join(5)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s")
        srv, _, t = echo_server(socket.AF_UNIX, path)
        with srv, socket.socket(socket.AF_UNIX) as c:
            c.settimeout(5); c.connect(path); c.sendall(b"unix"); assert c.recv(64) == b"unix"
        t.join(5)
    assert socket.getaddrinfo("localhost", 80) and socket.getaddrinfo(None, 80) and socket.getaddrinfo("127.0.0.1", 80)
    for host in ("127.0.0.1", "127.8.9.1", "::1", "0.0.0.0", "::ffff:127.0.0.1", "LOCALHOST", "a.localhost"):
        assert network_guard.is_local(host), host
    for host in ("203.0.113.1", "10.0.0.1", "2001:db8::1", "example.com", "localhost.example.com"):
        assert not network_guard.is_local(host), host


def test_child_python_processes_are_guarded(network_attempts):
    "Python processes the tests start (DDP workers, the CLI, benchmarks) pick the guard up through PYTHONPATH."
    srv, (_, port), t = echo_server()
    code = ("import socket, sys\n"
            f"c = socket.create_connection(('127.0.0.1', {port}), timeout=5); c.sendall(b'ok'); assert c.recv(8) == b'ok'\n"
            "try: socket.create_connection(('203.0.113.1', 80), timeout=1)\n"
            "except OSError as e: print(e); sys.exit(3)\n")
    with srv:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    t.join(5)
    assert r.returncode == 3, r.stderr[-2000:]
    assert MESSAGE in r.stdout and "203.0.113.1:80" in r.stdout
    assert network_attempts.take() == ["203.0.113.1:80"]          # logged from the child, seen here
