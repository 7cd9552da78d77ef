"""taxonomy.md must agree with what the installed channel plugins declare."""

from __future__ import annotations

from pathlib import Path

from beachhead.agent.channel import ChannelInfo
from beachhead.agent.registry import default_plugins
from beachhead.agent.targets import OsFamily

TAXONOMY = Path(__file__).resolve().parent.parent / "taxonomy.md"
COLUMNS = ["channel", "status", "direction", "medium", "OS", "prerequisites", "capabilities", "preference"]


def summary_rows(text: str) -> dict[str, dict[str, str]]:
    """The rows of the summary table, by channel name."""
    lines = [line.strip() for line in text.splitlines()]
    header = "| " + " | ".join(COLUMNS) + " |"
    start = lines.index(header) + 2  # skip the header and the separator
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(COLUMNS, cells, strict=True))
    return rows


def declared_row(info: ChannelInfo) -> dict[str, str]:
    """A declaration formatted as the table writes it."""
    return {
        "channel": info.name,
        "status": "implemented",
        "direction": info.direction.value,
        "medium": info.medium.value,
        "OS": ", ".join(sorted(info.os_families)),
        "prerequisites": ", ".join(p.value for p in info.prerequisites),
        "capabilities": ", ".join(sorted(info.capabilities)),
        "preference": ", ".join(f"{family} {rank}" for family, rank in sorted(info.preference.items())),
    }


def test_every_registered_channel_is_documented_as_declared() -> None:
    rows = summary_rows(TAXONOMY.read_text())
    channels = default_plugins().infos
    assert channels, "no channel plugin is registered"
    for name, info in channels.items():
        assert rows.get(name) == declared_row(info), f"taxonomy.md disagrees with the {name} plugin"


def test_every_implemented_row_has_a_plugin() -> None:
    rows = summary_rows(TAXONOMY.read_text())
    implemented = {name for name, row in rows.items() if row["status"] == "implemented"}
    assert implemented == set(default_plugins().infos)
    assert {"ssh", "winrm", "guestops", "keys", "pull"} <= set(rows)


def test_a_changed_declaration_is_caught() -> None:
    rows = summary_rows(TAXONOMY.read_text())
    info = default_plugins().infos["ssh"]
    changed = ChannelInfo(**{**info.__dict__, "preference": {**info.preference, OsFamily.WINDOWS: 1}})
    assert rows["ssh"] != declared_row(changed)
