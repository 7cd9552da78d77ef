"""Fixtures of the console tests: real console servers on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# -- RDP peers (tests/console/rdp_peers.py) ---------------------------------------------
from tests.console.rdp_peers import RdpPeer, start_shadow, start_xrdp


@pytest.fixture(scope="module")
def xrdp_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RdpPeer]:
    """Debian's xrdp (xorgxrdp) on loopback; its session appends what is typed to a file."""
    if os.geteuid() != 0:
        pytest.skip("the xrdp peer mounts account files in a namespace: needs root")
    peer = start_xrdp(tmp_path_factory.mktemp("xrdp"))
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def shadow_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RdpPeer]:
    """FreeRDP 2's X11 shadow server over an Xvfb whose xterm appends what is typed to a file."""
    peer = start_shadow(tmp_path_factory.mktemp("shadow"))
    yield peer
    peer.stop()


# -- VNC peers (tests/console/vnc_peers.py) ---------------------------------------------
from tests.conftest import wait_until  # noqa: E402
from tests.console.vnc_peers import QemuPeer, XvncPeer, start_qemu, start_xvnc  # noqa: E402


@pytest.fixture(scope="module")
def xvnc_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XvncPeer]:
    """TigerVNC's Xvnc on loopback with VNC Authentication; tests start xterms on it."""
    peer = start_xvnc(tmp_path_factory.mktemp("xvnc"))
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def qemu_vnc_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuPeer]:
    """QEMU's VNC server (with a password) in front of the lab's console VM, booted.
    One boot for every module that types into it (test_vnc_qemu, test_screen_wait): each
    test leaves the guest's shell at its prompt, echo on."""
    peer = start_qemu(tmp_path_factory.mktemp("qemu-vnc"))
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def booted(qemu_vnc_peer: QemuPeer) -> QemuPeer:
    """The console VM with its shell up (it writes its ready line to the serial port)."""
    wait_until(
        lambda: "beachhead-console: ready" in qemu_vnc_peer.serial.read_bytes().decode("utf-8", "replace"),
        60,
        "the console VM's boot",
    )
    return qemu_vnc_peer
