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
    (["model=mlp"], "model=mlp: reproduce takes scale=, data.root= and trainer.KEY=VALUE overrides"),
    (["trainer.max_steps=-1"], "trainer.max_steps=-1"),
    (["trainer.nosuch=1"], "trainer.nosuch"),
    (["data.root="], "data.root=: needs a folder"),
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


# ---- scale=full: the chapter's recipes where the data and a GPU are ------------------------------

FULL_ON_CIFAR = {3: "adam_vs_adamw", 4: "large_batch", 11: "onecycle", 16: "sgd_vs_adam", 17: "vision_recipes",
                 20: "exercise2"}


def test_at_full_scale_a_claim_without_its_data_or_gpu_says_which_is_missing(workdir):
    out = workdir / "claims"
    result = run_cli("reproduce", *map(str, FULL_ON_CIFAR), "scale=full", f"data.root={workdir / 'none'}",
                     "--out", str(out), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    claims = {c["number"]: c for c in json.loads((out / "claims.json").read_text())["claims"]}
    for number in FULL_ON_CIFAR:
        claim = claims[number]
        assert claim["verdict"] == "out of reach", claim
        assert f"looked for {workdir / 'none' / 'cifar-10-batches-py'}" in claim["seen"], claim["seen"]
        assert "no CUDA GPU" in claim["seen"] or torch_cuda_available()
        assert "data.root=DIR" in claim["full_scale"] and not claim["runs"]
    assert f"looked for {workdir / 'none' / 'imagenet' / 'train'}" in claims[17]["seen"]


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def test_at_full_scale_with_the_data_and_a_gpu_the_chapters_recipes_run(tmp_path, monkeypatch):
    """CIFAR-10 (fake files) under data.root and a GPU (said to be there; the runs use the CPU):
    claims 11 and 20 train the chapter's Exercise 2 (recipe scheduler_ablation as it is, 5 schedules
    x 3 seeds) once, in claim 20's folder, and judge it by their rules as the chapter's own
    experiment (not a proxy); claim 17 runs both CIFAR-10 recipes and says ImageNet is missing.
    trainer.max_steps=4 goes to every run: a rehearsal (the step schedule needs 4 steps for its
    first drop at 30%)."""
    import optbench.commands.reproduce as reproduce
    from conftest import accept_fake_cifar, write_fake_cifar10
    from optbench.commands.reproduce import claim
    from optbench.finished_runs import find_runs

    root = tmp_path / "data"
    write_fake_cifar10(root, per_batch=26)  # 130 training images
    accept_fake_cifar(monkeypatch)
    monkeypatch.setattr(claim, "has_gpu", lambda: True)
    # ResNet-18 takes 10 s a step on one core: the recipe's ResNet runs at depth 20 and batch 16 here,
    # in this process (at batch 128 its 21 runs took 150 s of the suite).
    on_data = claim.Context.on_data
    smaller_cifar = ["model.depth=20", "data.batch_size=16", "data.num_workers=0"]

    def smaller(self: claim.Context, recipe: str, data: str = "cifar10") -> list[str]:
        return [*on_data(self, recipe, data), *(smaller_cifar if data == "cifar10" else [])]

    monkeypatch.setattr(claim.Context, "on_data", smaller)
    out = tmp_path / "claims"
    assert reproduce.main(["11", "exercise2", "17", "scale=full", f"data.root={root}", "trainer.max_steps=4",
                           "trainer.device=cpu", "--out", str(out)]) == 0
    claims = {c["number"]: c for c in json.loads((out / "claims.json").read_text())["claims"]}
    runs = find_runs([out / "20_exercise2" / "cifar10_runs"])
    assert len(runs) == 15 and {r.status for r in runs} == {"completed"}
    assert sorted((r.value("scheduler"), r.value("trainer.seed")) for r in runs) == sorted(
        (s, seed) for s in ("none", "step", "cosine", "onecycle", "warmup_cosine") for seed in (0, 1, 2))
    config = runs[0].config
    assert config("data.root") == str(root) and config("data.name") == "cifar10"
    assert "recipe=scheduler_ablation" in (runs[0].path / ".hydra" / "overrides.yaml").read_text()
    assert config("model.depth") == 20 and config("trainer.epochs") == 30  # the recipe, not a stand-in
    assert config("optimizer.lr") == 0.1 and config("trainer.max_steps") == 4
    for number in (11, 20):
        assert claims[number]["verdict"] in ("reproduced", "not reproduced"), claims[number]
        assert claims[number]["figures"]["target"] == claim.CIFAR10_TARGET
        assert claims[number]["runs"] == ["20_exercise2/cifar10_runs"]
        assert "ResNet-18 on CIFAR-10" in claims[number]["workload"]
    assert set(claims[11]["figures"]["steps_to_target"]) == {"constant", "step", "OneCycle"}
    # Claim 17: both CIFAR-10 recipes, 3 seeds each (claim 16's sweeps), against the chapter's 95% and 94%;
    # 4 steps on random images are far below them, and ImageNet is not there.
    vision = claims[17]
    assert vision["verdict"] == "not reproduced", vision
    assert set(vision["figures"]["final_val_acc_percent"]) == {"cifar10_resnet18_sgd", "cifar10_resnet18_adamw"}
    assert vision["figures"]["held"] == {"cifar10_resnet18_sgd": False, "cifar10_resnet18_adamw": False}
    assert "ImageNet: not run" in vision["seen"] and "imagenet" in vision["figures"]["not_run"]["ImageNet"]
    for option, recipe in (("nesterov", "cifar10_resnet18_sgd"), ("adamw", "cifar10_resnet18_adamw")):
        arm = find_runs([out / "16_sgd_vs_adam" / f"recipe_seeds_{option}"])
        assert len(arm) == 3 and all(f"recipe={recipe}" in (r.path / ".hydra" / "overrides.yaml").read_text()
                                     for r in arm)


def test_at_full_scale_the_gan_claim_runs_the_chapters_dcgan_which_needs_no_data_set_or_gpu(workdir):
    out = workdir / "claims"
    result = run_cli("reproduce", "gan", "scale=full", "trainer.max_steps=2", "--out", str(out), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    gan = next(c for c in json.loads((out / "claims.json").read_text())["claims"] if c["number"] == 18)
    assert gan["verdict"] in ("reproduced", "not reproduced") and gan["runs"] == ["18_gan/dcgan_runs"], gan
    dcgan = run_dirs(out / "18_gan" / "dcgan_runs")
    assert len(dcgan) == 6 and all("recipe=dcgan" in (r / ".hydra" / "overrides.yaml").read_text() for r in dcgan)
    assert "recipe dcgan" in gan["workload"] and "val/modes >= 10" in gan["seen"]
