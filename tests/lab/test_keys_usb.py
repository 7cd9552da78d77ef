"""The ``type`` step over the keys channel's usb backend (PutUsbScanCodes) on the lab:
1 KiB of mixed text typed into ``cat > FILE`` at lin-01's console arrives byte for
byte, paced by default and unpaced; the typed text is in neither journal nor logs nor
wire log; ``beachhead screenshot`` saves the console's picture. On con-01 (QEMU, whose
input queue drops keys when flooded) the default pace loses nothing where unpaced
typing loses keys."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import yaml
from PIL import Image

from tests.conftest import beachhead
from tests.lab.conftest import Vc, wait_for

SIZE = 1024
# Printable US-keyboard ASCII (shifted and unshifted symbols) and Tab.
ALPHABET = "".join(map(chr, range(0x20, 0x7F))) + "\t"


def mixed_text(seed: int) -> tuple[str, bytes]:
    """Boot-command text typing exactly ``SIZE`` bytes of lines, with some characters
    typed and erased again (``<bs>``); and the bytes that must arrive."""
    rng = random.Random(seed)
    typed: list[str] = []
    arrived = bytearray()
    while len(arrived) < SIZE:
        length = min(rng.randint(20, 70), SIZE - len(arrived) - 1)
        for _ in range(length):
            char = rng.choice(ALPHABET)
            typed.append("<lt>" if char == "<" else char)
            arrived += char.encode()
            if rng.random() < 0.02:
                typed.append("%<bs>")  # typed, then erased by the console's line editing
        typed.append("<enter>" if rng.random() < 0.5 else "\n")
        arrived += b"\n"
    return "".join(typed), bytes(arrived)


def _plan(path: Path, steps: list[dict[str, object]]) -> Path:
    path.write_text(yaml.safe_dump({"name": "keys", "steps": steps}, sort_keys=False))
    return path


def test_type_1kib_exactly_over_usb(tmp_path: Path, runs_dir: Path, vc: Vc, vsphere_uri: Callable[..., str]) -> None:
    vm = vc.vm("lin-01")
    wait_for(lambda: vm.guest.guestOperationsReady, what="lin-01 booted")
    paced_text, paced = mixed_text(1)
    unpaced_text, unpaced = mixed_text(2)
    assert paced != unpaced and len(paced) == len(unpaced) == SIZE
    steps: list[dict[str, object]] = []
    for name, text, pace in (("paced", paced_text, None), ("unpaced", unpaced_text, 0)):
        remote = f"/tmp/keys-{name}.txt"
        start = {"text": f"<leftCtrlOn>c<leftCtrlOff><wait1>rm -f {remote}; cat > {remote}<enter><wait1>"}
        body: dict[str, object] = {"text": text + "<leftCtrlOn>d<leftCtrlOff>"}
        if pace is not None:
            body["pace_ms"] = pace
        steps += [
            {"type": start},
            {"type": body},
            # cat has ended once nothing holds the file open for writing (bounded).
            {"run": f"for i in $(seq 200); do fuser -s {remote} 2>/dev/null || exit 0; sleep 0.1; done; exit 1"},
            {"download": {"src": remote, "dest": str(tmp_path / f"{name}.txt")}},
        ]
    plan = _plan(tmp_path / "plan.yaml", steps)
    wire_log = tmp_path / "wire.log"
    done = beachhead(
        "run", str(plan), "--target", vsphere_uri("lin-01"), "--json", "--wire-log", str(wire_log), timeout=180
    )
    assert done.returncode == 0, done.stderr + done.stdout
    [result] = [json.loads(line) for line in done.stdout.splitlines()]
    assert [step.get("channel") for step in result["steps"]][:2] == ["keys", "keys"]

    assert (tmp_path / "paced.txt").read_bytes() == paced
    assert (tmp_path / "unpaced.txt").read_bytes() == unpaced

    # Counts only: no line of what was typed is in the journal, the logs or the wire log.
    run_dir = runs_dir / result["run_id"]
    journal = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    typed = [entry for entry in journal if entry.get("op") == "type"]
    assert len(typed) == 4 and all(isinstance(entry.get("keys"), int) for entry in typed if "keys" in entry)
    lines = [line for line in (paced + unpaced).decode().splitlines() if len(line) >= 12]
    recorded = done.stderr + done.stdout + wire_log.read_text(errors="replace")
    recorded += "".join(path.read_text(errors="replace") for path in run_dir.rglob("*") if path.is_file())
    assert not [line for line in lines if line in recorded]
    assert "PutUsbScanCodes" in wire_log.read_text() and "<usbHidCode>" not in wire_log.read_text().replace(
        "<usbHidCode>***", ""
    )


def test_malformed_text_is_refused_before_anything_is_typed(
    tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    plan = _plan(tmp_path / "plan.yaml", [{"type": "touch /tmp/never<enter>"}, {"type": "echo <enetr>"}])
    refused = beachhead("run", str(plan), "--target", vsphere_uri("lin-01"))
    assert refused.returncode == 2
    assert "at offset 5: '<enetr>': unknown special key" in refused.stderr
    assert not runs_dir.exists() or not any(runs_dir.rglob("journal.jsonl"))


def test_screenshot_saves_the_console_picture(tmp_path: Path, vsphere_uri: Callable[..., str]) -> None:
    out = tmp_path / "lin-01.png"
    saved = beachhead("screenshot", vsphere_uri("lin-01"), "-o", str(out))
    assert saved.returncode == 0, saved.stderr
    assert "screenshot_not_deleted" not in saved.stderr  # the datastore copy is removed after the download
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(out) as picture:
        assert picture.width > picture.height > 0  # a landscape screen
    missing_vm = vsphere_uri("lin-01").replace("/lin-01?", "/no-such-vm?")
    missing = beachhead("screenshot", missing_vm, "-o", str(tmp_path / "x.png"))
    assert missing.returncode == 1 and not (tmp_path / "x.png").exists()


def _console_vm_uri(vsphere_uri: Callable[..., str], name: str) -> str:
    """The vsphere:// URI of a lab VM without a guest login (con-01 has none)."""
    parts = urlsplit(vsphere_uri(name, guest_password="unused"))
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("guest_user", "guest_password_env")]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/@")))


def _console_ready(lab: dict[str, Any], name: str) -> Path:
    """con-01's serial log, once its start script has said it is ready (bounded)."""
    from beachhead.bootstrap.lab.qemu_vm import READY_LINE

    log = Path(next(vm for vm in lab["vms"] if vm["name"] == name)["serial_log"])
    wait_for(lambda: log.exists() and READY_LINE in log.read_text(errors="replace"), timeout=90, what="con-01 up")
    return log


def _serial_section(log: Path, marker: str) -> bytes | None:
    text = log.read_bytes().decode(errors="replace") if log.exists() else ""
    begin, end = f"BEGIN-{marker}", f"END-{marker}"
    if end not in text.rpartition(begin)[2]:
        return None
    encoded = text.rpartition(begin)[2].partition(end)[0]
    return base64.b64decode("".join(encoded.split()))


def test_default_pace_loses_nothing_on_the_qemu_console_where_unpaced_typing_does(
    tmp_path: Path, lab: dict[str, Any], runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    serial_log = _console_ready(lab, "con-01")
    paced_text, paced = mixed_text(3)
    unpaced_text, unpaced = mixed_text(4)
    dump = (
        "{ echo BEGIN-P; base64 /tmp/paced; echo END-P; echo BEGIN-U; base64 /tmp/unpaced; echo END-U; }"
        " > /dev/ttyS0 2>&1<enter>"
    )
    plan = _plan(
        tmp_path / "plan.yaml",
        [
            {"wait": {"powered_on": {"timeout": 60}}},
            {"type": "<wait2><enter>cat > /tmp/paced<enter><wait1>"},
            {"type": paced_text + "<leftCtrlOn>d<leftCtrlOff><wait1>"},
            {"type": "<enter>cat > /tmp/unpaced<enter><wait1>"},
            {"type": {"text": unpaced_text, "pace_ms": 0}},
            # The flood's keys are in or dropped as they come (QEMU's queue holds 16).
            {"type": "<wait2><enter><leftCtrlOn>d<leftCtrlOff><wait1>"},
            {"type": dump},
        ],
    )
    done = beachhead("run", str(plan), "--target", _console_vm_uri(vsphere_uri, "con-01"), "--json", timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    arrived = wait_for(lambda: _serial_section(serial_log, "U") is not None, timeout=60, what="the dump")
    assert arrived
    assert _serial_section(serial_log, "P") == paced  # the default pace: nothing lost
    assert _serial_section(serial_log, "U") != unpaced  # flooded: QEMU's queue dropped keys


def test_wait_for_text_and_verified_lines_on_the_qemu_console(
    tmp_path: Path, lab: dict[str, Any], runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    pytest.importorskip("beachhead.plugins.screen_text")  # the OCR module (issue 12, VNC part)
    serial_log = _console_ready(lab, "con-01")
    rng = random.Random(5)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    # Three lines: the first, unpaced, arrives garbled and is retyped slower; the pace
    # stays slower for the lines after it, which need no retyping.
    lines = [" ".join(rng.choice(words) for _ in range(6)) for _ in range(3)]
    expected = "".join(f"{line}\n" for line in lines).encode()
    plan = _plan(
        tmp_path / "plan.yaml",
        [
            {
                "type": '<wait1><enter>echo "READY-$((6*7))"<enter><waitFor "READY-42" 30s>'
                "cat > /tmp/verified<enter><wait1>"
            },
            # Unpaced into a console that drops keys: verify retypes each garbled line.
            {"type": {"text": "".join(f"{line}<enter>" for line in lines), "pace_ms": 0, "verify": True}},
            {
                "type": "<leftCtrlOn>d<leftCtrlOff><wait1>"
                "{ echo BEGIN-V; base64 /tmp/verified; echo END-V; } > /dev/ttyS0<enter>"
            },
        ],
    )
    done = beachhead("run", str(plan), "--target", _console_vm_uri(vsphere_uri, "con-01"), "--json", timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    wait_for(lambda: _serial_section(serial_log, "V") is not None, timeout=60, what="the dump")
    assert _serial_section(serial_log, "V") == expected
    journal = (runs_dir / json.loads(done.stdout)["run_id"] / "journal.jsonl").read_text().splitlines()
    assert sum(json.loads(line).get("retyped_lines", 0) for line in journal) >= 1, "no line was retyped"
