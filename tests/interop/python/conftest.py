"""Fixtures: gateway processes on free loopback ports, and python-socketio clients.

GATEWAY_BIN overrides the binary (default <repo>/target/debug/maven-gateway).
"""

import pytest

from gateway_harness import Gateway, connect_client


def _launch(flags, log_dir, name, env=None):
    try:
        return Gateway(flags, log_dir=log_dir, name=name, env=env).start()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


def _stop_checked(gw):
    """SIGTERM, and the process must exit 0 (killed and reported when it does not)."""
    rc = gw.stop()
    assert rc == 0, f"gateway exited with {rc} after SIGTERM:\n{gw.log_tail()}"


@pytest.fixture(scope="session")
def gateway_log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gateway-logs")


@pytest.fixture(scope="session")
def gateway(gateway_log_dir):
    """A default gateway shared by the whole session. Tests isolate themselves by symbol."""
    gw = _launch([], gateway_log_dir, "shared")
    yield gw
    _stop_checked(gw)


@pytest.fixture
def gateway_factory(gateway_log_dir, request):
    """start(*flags, env=None) -> Gateway; each one is stopped with SIGTERM (exit 0 asserted)
    afterwards. `env` sets variables over the harness defaults (None removes one)."""
    started = []

    def start(*flags, env=None):
        gw = _launch(flags, gateway_log_dir, request.node.name[:40].replace("/", "_"), env)
        started.append(gw)
        return gw

    yield start
    errors = []
    for gw in started:
        try:
            _stop_checked(gw)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)


@pytest.fixture
def clients(gateway_factory):
    """connect(gw, transports=None, namespace='/ws', ordered=False) -> (client, recorder).

    Depends on gateway_factory so clients disconnect before per-test gateways stop.
    """
    made = []

    def connect(gw, transports=None, **kw):
        sio, rec = connect_client(gw, transports=transports, **kw)
        made.append(sio)
        return sio, rec

    yield connect
    for sio in made:
        try:
            sio.disconnect()
        except Exception:
            pass
