"""Plan files: the accepted forms, and rejection before anything runs with the file,
the step (number and key), the field and its line named."""

from __future__ import annotations

from pathlib import Path

import pytest

from beachhead.agent.errors import InputError
from beachhead.agent.plans import load_plan
from beachhead.agent.targets import OsFamily
from beachhead.agent.vsphere.states import VmState
from beachhead.plugins.pull import GuestReport, ReportCondition, UserDataStep, Via
from beachhead.plugins.steps.download import DownloadStep
from beachhead.plugins.steps.extra_config import ExtraConfigStep
from beachhead.plugins.steps.power import PowerStep
from beachhead.plugins.steps.run import RunStep
from beachhead.plugins.steps.upload import UploadStep
from beachhead.plugins.steps.vm_states import VmCondition
from beachhead.plugins.steps.wait import PortOpen, WaitStep
from tests.conftest import write_plan


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "app.conf").write_text("x=1\n")
    (tmp_path / "setup.sh").write_text("echo hi\n")
    return tmp_path


def test_every_step_form(plan_dir: Path) -> None:
    plan = load_plan(
        write_plan(
            plan_dir,
            """
            name: web
            os: linux
            channels: [ssh]
            wait: [{port: 22, timeout: 30}]
            timeout: 120
            steps:
              - upload: {src: files/app.conf, dest: /etc/app.conf, mode: 0640}
              - upload: {src: files/app.conf, dest: /etc/b.conf, mode: "755"}
              - download: {src: /var/log/syslog, dest: "logs/{target}.log"}
              - run: systemctl restart app
              - run: {script: setup.sh, shell: bash, become: true, timeout: 60, env: {A: "1", B: 2}}
              - wait: {port: 8080, timeout: 5}
            """,
        )
    )
    assert plan.name == "web" and plan.os is OsFamily.LINUX and plan.channels == ("ssh",)
    assert [w.condition for w in plan.wait] == [PortOpen(22, 30.0)] and plan.timeout == 120.0
    up1, up2, down, run1, run2, wait = plan.steps
    assert isinstance(up1, UploadStep) and up1.mode == 0o640 and up1.src == plan_dir / "files" / "app.conf"
    assert isinstance(up2, UploadStep) and up2.mode == 0o755
    assert isinstance(down, DownloadStep) and down.local_path("a/b") == plan_dir / "logs" / "a_b.log"
    assert isinstance(run1, RunStep) and run1.spec.command == "systemctl restart app"
    assert isinstance(run2, RunStep) and run2.spec.script == plan_dir / "setup.sh"
    assert run2.spec.become and run2.spec.shell == "bash" and run2.spec.timeout == 60.0
    assert dict(run2.spec.env) == {"A": "1", "B": "2"}
    assert isinstance(wait, WaitStep) and wait.condition == PortOpen(8080, 5.0)


def test_yaml_octal_mode_means_octal(plan_dir: Path) -> None:
    for written, expected in (("0644", 0o644), ("644", 0o644), ("'0o600'", 0o600), ("0755", 0o755)):
        plan = load_plan(
            write_plan(plan_dir, f"name: m\nsteps:\n  - upload: {{src: setup.sh, dest: /x, mode: {written}}}\n")
        )
        step = plan.steps[0]
        assert isinstance(step, UploadStep) and step.mode == expected, written


@pytest.mark.parametrize(
    ("body", "where", "reason"),
    [
        ("steps:\n  - run: ls\n", "name", "missing"),
        ("name: x\n", "steps", "missing or empty"),
        ("name: x\nstepz: []\nsteps: [{run: ls}]\n", "stepz (line 2)", "unknown field"),
        ("name: x\nsteps:\n  - run: ls\n  - copy: {src: a}\n", "step 2 (line 4)", "unknown step 'copy'"),
        ("name: x\nsteps:\n  - run: ls\n    upload: {}\n", "step 1 (line 3)", "exactly one of"),
        (
            "name: x\nsteps:\n  - run: ls\n  - upload: {src: nope.txt, dest: /x}\n",
            "step 2 (upload).src (line 4)",
            "file not found",
        ),
        ("name: x\nsteps:\n  - upload: {src: setup.sh}\n", "step 1 (upload).dest (line 3)", "missing"),
        (
            "name: x\nsteps:\n  - upload: {src: setup.sh, dest: /x, mode: 999}\n",
            "step 1 (upload).mode (line 3)",
            "octal mode",
        ),
        (
            "name: x\nsteps:\n  - run: {command: ls, script: setup.sh}\n",
            "step 1 (run) (line 3)",
            "exactly one of command or script",
        ),
        ("name: x\nsteps:\n  - run: {command: ls, shell: zsh}\n", "step 1 (run).shell (line 3)", "unknown shell"),
        ("name: x\nsteps:\n  - run: {command: ls, timeout: -1}\n", "step 1 (run).timeout (line 3)", "positive"),
        (
            "name: x\nsteps:\n  - run: {command: ls, become: yes please}\n",
            "step 1 (run).become (line 3)",
            "true or false",
        ),
        ("name: x\nsteps:\n  - wait: {port: 70000}\n", "step 1 (wait).port (line 3)", "TCP port"),
        ("name: x\nsteps:\n  - wait: {tools_runing: {timeout: 3}}\n", "step 1 (wait) (line 3)", "unknown condition"),
        ("name: x\nsteps:\n  - wait: {tools_running: true}\n", "step 1 (wait).tools_running (line 3)", "mapping"),
        ("name: x\nwait: [{ip_assigned: {timeout: -1}}]\n", "wait[1].ip_assigned.timeout (line 2)", "positive"),
        ("name: x\nwait: [{ip_assigned: {retries: 1}}]\n", "wait[1].ip_assigned.retries (line 2)", "unknown"),
        ("name: x\nos: solaris\nsteps: [{run: ls}]\n", "os (line 2)", "unknown OS family"),
        ("name: x\nsteps:\n  - run: ls\n    os: solaris\n", "step 1 (run).os (line 4)", "unknown OS family"),
        ("name: x\nsteps:\n  - run: ls\n    os: [linux]\n", "step 1 (run).os (line 4)", "unknown OS family"),
        (
            "name: x\nsteps:\n  - run: ls\n    os: linux\n    when: always\n",
            "step 1 (run).when (line 5)",
            "unknown field beside run (allowed: os)",
        ),
        ("name: x\nsteps:\n  - os: linux\n", "step 1 (line 3)", "exactly one of"),
        ("name: x\nsteps:\n  - os: linux\n    copy: a\n", "step 1 (line 4)", "unknown step 'copy'"),
        (
            "name: x\nos: linux\nsteps:\n  - run: ver\n    os: windows\n",
            "step 1 (run).os (line 5)",
            "the plan is for linux (os: linux): this step would never run",
        ),
        ("name: x\nsteps:\n  - run: ''\n", "step 1 (run) (line 3)", "empty command"),
        ("name: x\nsteps: [{run: ls}\n", "line 3, column 1", "invalid YAML"),
        ("name: x\nsteps:\n  - extra_config: {}\n", "step 1 (extra_config) (line 3)", "mapping of extraConfig keys"),
        (
            "name: x\nsteps:\n  - extra_config: {a b: c}\n",
            "step 1 (extra_config).a b (line 3)",
            "not an extraConfig key",
        ),
        (
            "name: x\nsteps:\n  - extra_config: {guestinfo.n: 5}\n",
            "step 1 (extra_config).guestinfo.n (line 3)",
            "quote it",
        ),
        ("name: x\nsteps:\n  - power: restart\n", "step 1 (power) (line 3)", "on or off"),
        (
            "name: x\nsteps:\n  - userdata: {user_data: nope}\n",
            "step 1 (userdata).user_data (line 3)",
            "file not found",
        ),
        (
            "name: x\nsteps:\n  - userdata: {user_data: setup.sh, via: usb}\n",
            "step 1 (userdata).via (line 3)",
            "metadata or",
        ),
        ("name: x\nsteps:\n  - userdata: {meta_data: setup.sh}\n", "step 1 (userdata).user_data (line 3)", "missing"),
        ("name: x\nwait: [{phoned_home: {timeout: 0}}]\n", "wait[1].phoned_home.timeout (line 2)", "positive"),
    ],
)
def test_malformed_plans_are_rejected_with_location(plan_dir: Path, body: str, where: str, reason: str) -> None:
    path = write_plan(plan_dir, body)
    with pytest.raises(InputError) as caught:
        load_plan(path)
    assert caught.value.source == str(path)
    assert caught.value.where == where, caught.value
    assert reason in caught.value.reason
    assert caught.value.exit_status == 2


def test_vm_steps(plan_dir: Path) -> None:
    path = write_plan(
        plan_dir,
        """
        name: vm
        steps:
          - extra_config: {guestinfo.role: web, "guestinfo.old": null, disk.EnableUUID: "TRUE"}
          - power: off
          - power: "on"
        """,
    )
    config, off, on = load_plan(path).steps
    assert config == ExtraConfigStep({"guestinfo.role": "web", "guestinfo.old": None, "disk.EnableUUID": "TRUE"})
    assert config.describe() == "extra_config guestinfo.role, guestinfo.old, disk.EnableUUID"
    assert off == PowerStep(on=False) and on == PowerStep(on=True)


def test_userdata_step_and_guest_report_waits(plan_dir: Path) -> None:
    path = write_plan(
        plan_dir,
        """
        name: pull
        wait: [userdata_fetched]
        steps:
          - userdata: {user_data: setup.sh, meta_data: files/app.conf, via: guestinfo, instance_id: web-1}
          - wait: {phoned_home: {timeout: 600}}
        """,
    )
    plan = load_plan(path)
    assert [w.condition for w in plan.wait] == [ReportCondition(GuestReport.USERDATA_FETCHED)]
    step, wait = plan.steps
    assert step == UserDataStep(
        user_data=plan_dir / "setup.sh",
        via=Via.GUESTINFO,
        meta_data=plan_dir / "files" / "app.conf",
        instance_id="web-1",
    )
    assert isinstance(wait, WaitStep) and wait.condition == ReportCondition(GuestReport.PHONED_HOME, 600.0)


def test_missing_plan_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_plan(tmp_path / "absent.yaml")


def test_vm_conditions_in_their_three_forms(plan_dir: Path) -> None:
    path = write_plan(
        plan_dir,
        """
        name: boot
        wait:
          - powered_on
          - {tools_running: {timeout: 300}}
          - {guestops_ready: }
        steps:
          - wait: {ip_assigned: {timeout: 60}}
        """,
    )
    plan = load_plan(path)
    assert [wait.condition for wait in plan.wait] == [
        VmCondition(VmState.POWERED_ON),
        VmCondition(VmState.TOOLS_RUNNING, 300.0),
        VmCondition(VmState.GUESTOPS_READY),
    ]
    assert plan.steps[0] == WaitStep(VmCondition(VmState.IP_ASSIGNED, 60.0), "ip_assigned")
    assert plan.steps[0].describe() == "wait for ip assigned"


def test_a_step_may_be_for_one_os_family(plan_dir: Path) -> None:
    plan = load_plan(
        write_plan(
            plan_dir,
            """
            name: mixed
            steps:
              - run: {command: "echo %COMPUTERNAME%", shell: cmd}
                os: windows
              - os: linux
                run: uname -a
              - upload: {src: setup.sh, dest: /tmp/setup.sh}
              - run: ls
                os: null
            """,
        )
    )
    assert plan.step_os == {1: OsFamily.WINDOWS, 2: OsFamily.LINUX}
    assert [plan.os_of(n) for n in (1, 2, 3, 4)] == [OsFamily.WINDOWS, OsFamily.LINUX, None, None]
    first, second, *_ = plan.steps
    assert isinstance(first, RunStep) and first.spec.shell == "cmd"
    assert isinstance(second, RunStep) and second.spec.command == "uname -a"


def test_a_plan_built_in_python_checks_its_step_os() -> None:
    from beachhead.agent.plans import Plan
    from beachhead.agent.render import RunSpec

    step = RunStep(RunSpec(command="ls"))
    assert Plan("p", (step,), step_os={1: OsFamily.LINUX}).os_of(1) is OsFamily.LINUX
    with pytest.raises(InputError, match="no step 2"):
        Plan("p", (step,), step_os={2: OsFamily.LINUX})
    with pytest.raises(InputError, match="must be an OsFamily"):
        Plan("p", (step,), step_os={1: "linux"})  # type: ignore[dict-item]
    with pytest.raises(InputError, match="would never run"):
        Plan("p", (step,), os=OsFamily.WINDOWS, step_os={1: OsFamily.LINUX})
