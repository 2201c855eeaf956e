"""`campaign demo` sends two campaigns to no server, adds the orders after them, writes the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from engine.cli import cli

REPO = Path(__file__).resolve().parent.parent


def test_the_demo_report_shows_a_lift_for_the_drip_and_none_for_the_broadcast(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    for name in ("segments", "campaigns", "templates"):
        shutil.copytree(REPO / name, folder / name)
    base = ["--project", str(folder)]
    now = "2026-11-30T05:00:00"
    demo = CliRunner().invoke(cli, ["demo", "--merchants", "400", "--now", now, *base])
    assert demo.exit_code == 0, demo.output
    report_file = folder / "report.html"
    assert report_file.is_file() and str(report_file) in demo.output.replace("\n", "")
    assert "no mail left this machine" in demo.output
    html = report_file.read_text(encoding="utf-8")
    assert "winback-dormant" in html and "<script" not in html

    result = CliRunner().invoke(cli, ["report", "--format", "json", *base])
    assert result.exit_code == 0, result.output
    rows = {(r["campaign"], r["step"]): r for r in json.loads(result.output)}
    drip = rows[("winback-dormant", 1)]
    assert drip["sent"] > 0 and drip["holdout"] > 0
    assert drip["conversion_rate"] > drip["holdout_conversion_rate"] and drip["lift"] > 0
    assert drip["lift_ci_low"] is not None
    broadcast = rows[("partner-logistics", None)]
    assert broadcast["sent"] > 0 and broadcast["holdout"] == 0 and broadcast["lift"] is None
