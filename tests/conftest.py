"""Test-session guards (issue 15): no network at test time.

Every connection to a non-loopback address fails, in this process and in the Python processes the tests start:

- in process: `socket.socket.connect`/`connect_ex`/`sendto`, `socket.create_connection`, `socket.getaddrinfo` and
  `socket.gethostbyname(_ex)` are wrapped; an internet address (AF_INET/AF_INET6) that is not loopback, or a host name
  that is not `localhost`, raises `NetworkBlocked` (an `OSError`, as on an offline machine) with the guard's message.
  Loopback (127.0.0.0/8, ::1, 0.0.0.0, `localhost`) and AF_UNIX sockets stay allowed: the DDP test's gloo group, the
  wandb service and the browser test's local Jupyter server use them.
- in child Python processes: the same code is written as `sitecustomize.py` into a temporary folder that is put first
  on `PYTHONPATH`, so every Python started with this environment (DDP workers, the CLI console script, benchmark
  smoke runs, the browser test's Jupyter server) installs the guard at start-up (an existing `sitecustomize` further
  down the path still runs after it).
- every blocked attempt (any process) is also appended to a log file; a test during which one was logged fails, even
  when a library caught the `OSError` and fell back quietly.

Limits: C/C++ code that opens sockets itself (gloo, ZMQ, a compiled downloader) and programs that are not Python
(Chromium) are not covered, nor are Python children started with an environment that drops `PYTHONPATH` or with
`-I`/`-S`; `sendmsg` and raw `_socket.socket` objects are not wrapped; the notebooks run by `nbdev-test` are outside
pytest and unguarded. An attempt from a background thread or a lingering child is charged to the test running when it
is logged (the failure names the process, thread and source line). `GAN_ENGINE_ALLOW_NETWORK=1` turns the guard off.
"""
import importlib.util, os, shutil, tempfile
from pathlib import Path

import pytest

LOG_ENV = "GAN_ENGINE_NETGUARD_LOG"
GUARD_SOURCE = r'''
"gan_engine test guard (tests/conftest.py): no network connections from this Python process; loopback and unix sockets stay allowed."
import ipaddress, os, socket

MESSAGE = ("gan_engine test guard: network access to {target} blocked (tests must not use the network; loopback "
           "and unix sockets are allowed; see tests/conftest.py)")
LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NetworkBlocked(OSError):
    "A connection or name lookup the test guard refused."


class LookupBlocked(socket.gaierror, NetworkBlocked):
    "A name lookup the test guard refused (a `socket.gaierror`, as on an offline machine)."


def is_local(host):
    "True for a loopback or unspecified address, `localhost` (and *.localhost), or no host at all."
    if host is None: return True
    if isinstance(host, (bytes, bytearray)): host = bytes(host).decode("ascii", "replace")
    if not isinstance(host, str): return False
    h = host.strip().lower().rstrip(".")
    if h in LOCAL_NAMES or h.endswith(".localhost"): return True
    try: ip = ipaddress.ip_address(h.strip("[]").split("%", 1)[0])
    except ValueError: return False
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None: ip = mapped
    return ip.is_loopback or ip.is_unspecified


def _caller():
    "Where the attempt came from: the innermost frame outside the socket and HTTP plumbing."
    import sys, threading
    f = sys._getframe(2)
    while f is not None and any(m in f.f_code.co_filename for m in ("socket.py", "ssl.py", "/http/", "urllib", "asyncio")):
        f = f.f_back
    where = "%s:%d" % (f.f_code.co_filename, f.f_lineno) if f is not None else "?"
    return "pid %d, thread %s, %s" % (os.getpid(), threading.current_thread().name, where)


def refuse(target, error=NetworkBlocked):
    "Note the attempt in the session's log (when set) and raise the guard's error."
    log = os.environ.get("GAN_ENGINE_NETGUARD_LOG")
    if log:
        try:
            with open(log, "a") as f: f.write("%s\t%s\n" % (_caller(), target))
        except Exception: pass
    raise error(MESSAGE.format(target=target))


def _target(address):
    return "%s:%s" % (address[0], address[1]) if isinstance(address, tuple) and len(address) > 1 else repr(address)


def _check(sock, address):
    if (sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and address
            and not is_local(address[0])):
        refuse(_target(address))


def install():
    "Wrap the socket functions (once per process)."
    if getattr(socket, "_gan_engine_netguard", None) is not None: return
    orig = {"connect": socket.socket.connect, "connect_ex": socket.socket.connect_ex, "sendto": socket.socket.sendto,
            "create_connection": socket.create_connection, "getaddrinfo": socket.getaddrinfo,
            "gethostbyname": socket.gethostbyname, "gethostbyname_ex": socket.gethostbyname_ex}

    def connect(self, address):
        _check(self, address); return orig["connect"](self, address)
    def connect_ex(self, address):
        _check(self, address); return orig["connect_ex"](self, address)
    def sendto(self, data, *args):
        if args: _check(self, args[-1])
        return orig["sendto"](self, data, *args)
    def create_connection(address, *args, **kwargs):
        if not is_local(address[0]): refuse(_target(address))
        return orig["create_connection"](address, *args, **kwargs)
    def getaddrinfo(host, *args, **kwargs):
        if not is_local(host): refuse(host, LookupBlocked)
        return orig["getaddrinfo"](host, *args, **kwargs)
    def gethostbyname(host):
        if not is_local(host): refuse(host, LookupBlocked)
        return orig["gethostbyname"](host)
    def gethostbyname_ex(host):
        if not is_local(host): refuse(host, LookupBlocked)
        return orig["gethostbyname_ex"](host)

    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
    socket.create_connection, socket.getaddrinfo = create_connection, getaddrinfo
    socket.gethostbyname, socket.gethostbyname_ex = gethostbyname, gethostbyname_ex
    socket._gan_engine_netguard = orig


def uninstall():
    "Put the original socket functions back."
    orig = getattr(socket, "_gan_engine_netguard", None)
    if orig is None: return
    for k in ("connect", "connect_ex", "sendto"): setattr(socket.socket, k, orig[k])
    for k in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex"): setattr(socket, k, orig[k])
    socket._gan_engine_netguard = None


def _chain():
    "Run the next sitecustomize on the path (the one this file shadows), if there is one."
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    for p in sys.path:
        if os.path.abspath(p or ".") == here: continue
        f = os.path.join(p or ".", "sitecustomize.py")
        if os.path.isfile(f):
            import importlib.util
            spec = importlib.util.spec_from_file_location("_gan_engine_next_sitecustomize", f)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


if __name__ == "sitecustomize":   # a Python process the tests started
    install()
    _chain()
'''

_state = {"dir": None, "guard": None, "env": {}, "seen": 0}


def _load_guard(path:Path):
    spec = importlib.util.spec_from_file_location("gan_engine_netguard", path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def pytest_configure(config):
    if os.environ.get("GAN_ENGINE_ALLOW_NETWORK") == "1" or _state["guard"] is not None: return
    d = Path(tempfile.mkdtemp(prefix="gan_engine-netguard-"))
    (d / "sitecustomize.py").write_text(GUARD_SOURCE)
    log = d / "attempts.log"; log.touch()
    _state["env"] = {k: os.environ.get(k) for k in ("PYTHONPATH", LOG_ENV)}
    os.environ["PYTHONPATH"] = str(d) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    os.environ[LOG_ENV] = str(log)
    _state.update(dir=d, guard=_load_guard(d / "sitecustomize.py"), seen=0)
    _state["guard"].install()


def pytest_unconfigure(config):
    g = _state["guard"]
    if g is None: return
    g.uninstall()
    for k, v in _state["env"].items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v
    shutil.rmtree(_state["dir"], ignore_errors=True)
    _state.update(dir=None, guard=None)


def blocked_attempts()->list[str]:
    "Every blocked attempt logged this session (any process), oldest first: 'where<TAB>target'."
    d = _state["dir"]
    if d is None: return []
    try: return (d / "attempts.log").read_text().splitlines()
    except OSError: return []


def _phase():
    "Around a test phase: fail it when a blocked network attempt was logged meanwhile (even one a library swallowed)."
    if _state["guard"] is None: return (yield)
    _state["seen"] = len(blocked_attempts())
    result = yield   # the phase's own error, if any, comes first
    new = blocked_attempts()[_state["seen"]:]
    _state["seen"] += len(new)
    if new:
        pytest.fail("gan_engine test guard: this test tried to use the network: "
                    + "; ".join("%s (%s)" % tuple(reversed(line.split("\t", 1))) for line in new[:5])
                    + (" ..." if len(new) > 5 else ""), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item): return (yield from _phase())

@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item): return (yield from _phase())

@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem): return (yield from _phase())


class _Acknowledge:
    "Blocked attempts a test expects: `take()` returns those logged since the phase began and accepts them."
    def take(self)->list[str]:
        new = blocked_attempts()[_state["seen"]:]
        _state["seen"] += len(new)
        return [line.split("\t", 1)[-1] for line in new]


@pytest.fixture
def network_attempts():
    "For tests of the guard itself: the blocked attempts they provoke on purpose (see `_Acknowledge.take`)."
    if _state["guard"] is None: pytest.skip("the network guard is off (GAN_ENGINE_ALLOW_NETWORK=1)")
    return _Acknowledge()


@pytest.fixture
def network_guard():
    "The guard module loaded in this process (its `is_local`, `NetworkBlocked`, `MESSAGE`)."
    if _state["guard"] is None: pytest.skip("the network guard is off (GAN_ENGINE_ALLOW_NETWORK=1)")
    return _state["guard"]
