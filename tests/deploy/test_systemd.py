"""deploy/debugregd.service and its drop-ins: `systemd-analyze verify` finds nothing to say, alone
or with any drop-in, and `systemd-analyze security` rates them no worse than the README says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.deploy.fleet import DROP_INS, UNIT, tool

README = UNIT.parents[1] / "README.md"
ANALYZE_TIMEOUT_S = 60


def install(tmp_path: Path, drop_ins: Sequence[Path]) -> Path:
    """The unit in a directory of its own, its ExecStart pointed at this environment's
    debugregd (verify checks that the binary exists), with `drop_ins` in its .d directory."""
    debugregd = Path(sys.executable).with_name("debugregd")
    assert debugregd.exists(), "the package's console script (pip install -e .)"
    units = tmp_path / "units"
    (units / f"{UNIT.name}.d").mkdir(parents=True)
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/debugregd " in text
    unit = units / UNIT.name
    unit.write_text(text.replace("ExecStart=/usr/local/bin/debugregd ", f"ExecStart={debugregd} "))
    for drop_in in drop_ins:
        shutil.copy(drop_in, units / f"{UNIT.name}.d" / drop_in.name)
    return unit


def analyze(unit: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The unit's own directory first, then systemd's (for network.target and the like); drop-ins
    # are found through the search path.
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit.parent}:")
    return subprocess.run(
        [tool("systemd-analyze"), *args, str(unit)],
        capture_output=True,
        text=True,
        timeout=ANALYZE_TIMEOUT_S,
        check=False,
        env=env,
    )


def exposure(unit: Path) -> float:
    rated = analyze(unit, "security", "--offline=yes", "--no-pager")
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", rated.stdout)
    assert found, rated.stdout + rated.stderr
    return float(found.group(1))


def readme_exposure(setup: str) -> float:
    """The exposure the README's Deployment section reports for `setup` (unit, perf.conf...)."""
    found = re.search(rf"`{re.escape(setup)}`[^|\n]*\|\s*([0-9.]+)", README.read_text())
    assert found, f"README reports no systemd-analyze security exposure for {setup}"
    return float(found.group(1))


@pytest.mark.parametrize(
    "drop_ins",
    [(), *((d,) for d in DROP_INS), tuple(DROP_INS)],
    ids=lambda d: "+".join(p.name for p in d) or "unit",
)
def test_systemd_analyze_verify_finds_nothing_to_say(
    tmp_path: Path, drop_ins: tuple[Path, ...]
) -> None:
    verified = analyze(install(tmp_path, drop_ins), "verify")
    # verify exits 0 even for keys it ignores: every line it prints is a finding.
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout + verified.stderr == ""


def test_verify_would_report_a_mistake(tmp_path: Path) -> None:
    unit = install(tmp_path, ())
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictly"))
    assert "ignoring: strictly" in analyze(unit, "verify").stderr


def test_the_unit_raises_the_file_limit_for_event_streams() -> None:
    limits = re.findall(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert limits and int(limits[0]) >= 16_384  # 10,000 streams plus the journal and clients


@pytest.mark.parametrize(
    ("setup", "drop_ins"),
    [("debugregd.service", ())] + [(d.name, (d,)) for d in DROP_INS],
)
def test_the_security_exposure_is_no_worse_than_the_readme_reports(
    tmp_path: Path, setup: str, drop_ins: tuple[Path, ...]
) -> None:
    assert exposure(install(tmp_path, drop_ins)) <= readme_exposure(setup)
