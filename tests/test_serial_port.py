"""The SSH host keys a guest printed on its serial port (agent/vsphere/serial_port.py):
found anywhere on a line, each once, nothing else taken for one."""

from __future__ import annotations

from beachhead.agent.vsphere.serial_port import SerialPortFile, printed_host_keys

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb6O0lIh2bh1x3n0Zk7lkbvO0v2Wc7hBv7e8fK0g0Yr"
ECDSA = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY="


def test_keys_printed_on_the_serial_port() -> None:
    text = (
        "[    0.000000] Linux version 6.1.0\r\n"
        f"beachhead-console: ready con-01 {ED25519} root@con-01\r\n"
        f"{ED25519} root@con-01\n"  # printed again: pinned once
        f"{ECDSA}\n"
        "Xssh-rsa AAAAB3NzaC1yc2E glued to a word: not a key\n"
        "ssh-ed25519 notbase64\n"
    )
    assert printed_host_keys(text) == [ED25519, ECDSA]
    assert printed_host_keys("no keys here\n") == []


def test_serial_port_file_names_its_datastore_path() -> None:
    assert str(SerialPortFile("LocalDS_0", "con-01", "serial.log", "DC0")) == "[LocalDS_0] con-01/serial.log"
    assert str(SerialPortFile("ds", "", "serial.log", "DC0")) == "[ds] serial.log"
