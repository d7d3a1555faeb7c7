"""`optbench reproduce`: every claim runs (smoke scale) and gets a verdict; the folder resumes;
bad input is refused before anything runs. What each claim computes is tested in
tests/test_reproduce_<theme>.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli, run_dirs
from optbench.commands.reproduce.claim import VERDICTS

CHAPTER_CLAIMS = set(range(1, 21))  # the claims issue 18 lists, by number


def test_every_claim_of_the_issue_is_listed_with_its_rule(workdir):
    result = run_cli("reproduce", "--list", cwd=workdir)
    assert result.returncode == 0, result.stderr
    numbers = {int(line.split()[0]) for line in result.stdout.splitlines() if line[:2].strip().isdigit()}
    assert numbers == CHAPTER_CLAIMS
    assert result.stdout.count("rule: ") == len(CHAPTER_CLAIMS)
    assert not (workdir / "outputs").exists()


def test_every_claim_runs_at_smoke_scale_and_gets_a_verdict(workdir):
    out = workdir / "claims"
    result = run_cli("reproduce", "scale=smoke", "--out", str(out), cwd=workdir, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((out / "claims.json").read_text())
    assert record["scale"] == "smoke" and record["command"].startswith("optbench reproduce scale=smoke")
    assert record["machine"]["cpu"]["count"] >= 1
    assert {c["number"] for c in record["claims"]} == CHAPTER_CLAIMS
    for claim in record["claims"]:
        assert claim["verdict"] in VERDICTS, claim
        assert claim["statement"] and claim["rule"] and claim["seen"] and claim["workload"], claim
        if claim["verdict"] == "out of reach":
            assert claim["full_scale"].startswith(("optbench ", "python ")), claim
        for folder in claim["runs"]:  # each sweep or command output it names exists
            assert (out / folder).is_dir(), (claim["name"], folder)
        for image in claim["images"]:
            assert (out / image).stat().st_size > 0
    table = (out / "claims.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(CHAPTER_CLAIMS)
    # The training runs are ordinary run folders: `optbench report` reads them.
    sweep = out / "01_momentum" / "runs"
    assert len(run_dirs(sweep)) == 3
    report = run_cli("report", str(sweep), "--out", str(workdir / "report"), cwd=workdir)
    assert report.returncode == 0, report.stderr[-2000:]


def test_a_second_call_keeps_finished_claims_and_a_lost_outcome_resumes_its_sweep(workdir):
    out = workdir / "claims"
    first = run_cli("reproduce", "momentum", "scale=smoke", "--out", str(out), cwd=workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    outcome = out / "01_momentum" / "outcome.json"
    written = outcome.read_bytes()
    runs = {p: (p / "summary.json").stat().st_mtime_ns for p in run_dirs(out / "01_momentum" / "runs")}
    again = run_cli("reproduce", "1", "scale=smoke", "--out", str(out), cwd=workdir)
    assert again.returncode == 0 and "kept from" in again.stderr
    assert outcome.read_bytes() == written
    outcome.unlink()  # the verdict is computed again from the sweep, whose finished jobs are skipped
    third = run_cli("reproduce", "momentum", "scale=smoke", "--out", str(out), cwd=workdir)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "continuing the sweep" in third.stderr
    assert {p: (p / "summary.json").stat().st_mtime_ns for p in runs} == runs
    assert json.loads(outcome.read_text())["verdict"] == json.loads(written)["verdict"]


@pytest.mark.parametrize("args, message", [
    (["momentm"], "CLAIM=momentm: no such claim (did you mean momentum?)"),
    (["99"], "CLAIM=99: no such claim"),
    (["scale=huge"], "scale=huge: one of smoke, proxy, full"),
    (["--fast"], "--fast: no such flag"),
    (["--out"], "--out: needs a folder"),
])
def test_bad_input_is_refused_before_anything_runs(workdir, args, message):
    result = run_cli("reproduce", *args, cwd=workdir)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (workdir / "outputs").exists()


def test_a_folder_of_another_scale_or_of_something_else_is_refused_untouched(workdir):
    out = workdir / "claims"
    assert run_cli("reproduce", "momentum", "scale=smoke", "--out", str(out), cwd=workdir).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = run_cli("reproduce", "momentum", "--out", str(out), cwd=workdir)  # the default scale, proxy
    assert other.returncode == 2 and "holds a reproduction at scale=smoke" in other.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    foreign = workdir / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = run_cli("reproduce", "momentum", "scale=smoke", "--out", str(foreign), cwd=workdir)
    assert refused.returncode == 2 and "holds something other than a reproduction" in refused.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_claim_that_cannot_run_costs_the_others_nothing(tmp_path, monkeypatch, capsys):
    """A failing experiment leaves that claim without a verdict (exit 1, said why); the others are
    recorded, and the next call tries the failed one again."""
    import optbench.commands.reproduce as reproduce
    from optbench.commands.reproduce.claim import Claim, ClaimFailed, Outcome

    calls = []

    def broken(ctx):
        calls.append("broken")
        raise ClaimFailed("the sweep ended with exit status 1")

    def fine(ctx):
        calls.append("fine")
        return Outcome("reproduced", "it held", "nothing")

    claims = [Claim(1, "broken", "1", "a", "r", broken), Claim(2, "fine", "2", "b", "r", fine)]
    monkeypatch.setattr(reproduce, "all_claims", lambda: claims)
    out = tmp_path / "claims"
    assert reproduce.main(["--out", str(out)]) == 1
    assert "claim 1 (broken) could not be checked: the sweep ended with exit status 1" in capsys.readouterr().err
    verdicts = [c["verdict"] for c in json.loads((out / "claims.json").read_text())["claims"]]
    assert verdicts == ["not checked yet", "reproduced"]
    assert reproduce.main(["--out", str(out)]) == 1
    assert calls == ["broken", "fine", "broken"]
