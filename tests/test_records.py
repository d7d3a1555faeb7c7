"""How a result was made and where it can be read: summary.json `provenance`, the HTML report's
account of its runs, TensorBoard run names and HParams sessions (read back through the hparams
plugin's own code), MLflow (read back through MLflow's client), and the declared dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import torch
from tensorboard import context
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.base_plugin import TBContext
from tensorboard.plugins.hparams import api_pb2, metadata
from tensorboard.plugins.hparams.backend_context import Context

from conftest import TINY, read_metrics, read_summary, run_cli
from optbench.commands.report import write_report
from optbench.finished_runs import find_runs
from optbench.hparams import HParamsSession

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    """In a git repository with an uncommitted change: a single run (logged to MLflow as well)
    and a two-job sweep, under one folder."""
    repo = tmp_path_factory.mktemp("repo")
    (repo / "notes.txt").write_text("a\n")
    for command in (["init", "-q"], ["add", "notes.txt"], ["commit", "-q", "-m", "first"]):
        subprocess.run([*GIT, *command], cwd=repo, check=True)
    (repo / "notes.txt").write_text("b\n")  # a tracked file changed: dirty
    single = run_cli("run", *TINY, "trainer.mlflow=true", "optimizer.lr=0.002", "hydra.run.dir=logs/single", cwd=repo)
    assert single.returncode == 0, single.stderr
    sweep = run_cli("run", "-m", *TINY, "trainer.clip_norm=0.5,1.0", "hydra.sweep.dir=logs/sweep", cwd=repo)
    assert sweep.returncode == 0, sweep.stderr
    return repo / "logs"


def test_summary_records_how_the_run_was_made(logdir):
    record = read_summary(logdir / "single")["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=logdir.parent, capture_output=True, text=True).stdout
    assert record["command"] == ("optbench run " + " ".join(TINY)
                                 + " trainer.mlflow=true optimizer.lr=0.002 hydra.run.dir=logs/single")
    assert record["git"] == {"commit": head.strip(), "dirty": True}
    assert record["torch"] == torch.__version__ and record["cuda"] == torch.version.cuda
    assert record["optbench"] == "0.1.0" and record["python"] == ".".join(map(str, sys.version_info[:3]))
    assert record["cpu"]["count"] >= 1 and record["cpu"]["model"]
    assert record["gpu"] == ({"model": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
                             if torch.cuda.is_available() else None)


def test_the_html_report_says_how_its_results_were_made(logdir, tmp_path):
    write_report(find_runs([logdir]), tmp_path)
    page = (tmp_path / "report.html").read_text()
    commit = read_summary(logdir / "single")["provenance"]["git"]["commit"]
    assert "ordered by best <code>val/acc</code>, highest first" in page
    assert "<h2>Settings shared by every run</h2>" in page
    shared = page.split("<h2>Settings shared by every run</h2>")[1].split("</table>")[0]
    for setting, value in (("model", "mlp_bn"), ("data", "digits"), ("optimizer", "adamw"), ("scheduler", "cosine"),
                           ("trainer.max_steps", 6), ("steps run", 6)):
        assert f"<tr><td>{setting}</td><td>{value}</td></tr>" in shared
    assert "trainer.epochs" not in shared  # max_steps wins over it
    assert f"<td>{commit[:12]} (dirty)</td>" in page and f"<td>{torch.__version__}</td>" in page
    assert "trainer.clip_norm=0.5,1.0 hydra.sweep.dir=logs/sweep</td><td>2</td>" in page  # one command, two runs


def test_tensorboard_runs_are_named_and_keep_all_their_hparams_columns(logdir):
    names = sorted(str(p.relative_to(logdir)) for p in logdir.glob("**/tb/*"))
    assert names == ["single/tb/" + ",".join([*TINY[:3], "optimizer.lr=0.002"]),  # trainer.progress left out
                     "sweep/0/tb/trainer.clip_norm=0.5", "sweep/1/tb/trainer.clip_norm=1.0"]
    # What the HParams tab shows, through the plugin's own code: the columns of both.
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    plugin = Context(TBContext(data_provider=MultiplexerDataProvider(multiplexer, str(logdir))))
    request = context.RequestContext()
    tags = plugin.hparams_metadata(request, "")
    experiment = plugin.experiment_from_metadata(request, "", True, tags, plugin.hparams_from_data_provider(
        request, "", 1000))
    columns = {info.name for info in experiment.hparam_infos}
    assert {"optimizer", "optimizer.lr", "status", "trainer.max_steps", "trainer.clip_norm"} <= columns
    assert {"final/val/acc", "best/val/acc"} <= {info.name.tag for info in experiment.metric_infos}
    for run_tags in tags.values():
        start = metadata.parse_session_start_info_plugin_data(run_tags[metadata.SESSION_START_INFO_TAG])
        end = metadata.parse_session_end_info_plugin_data(run_tags[metadata.SESSION_END_INFO_TAG])
        assert start.hparams["status"].string_value == "completed" and end.status == api_pb2.STATUS_SUCCESS


def test_a_running_run_has_its_row_and_the_end_replaces_it(tmp_path):
    session = HParamsSession(tmp_path, {"optimizer": "adamw", "optimizer.lr": 0.01})

    def read() -> tuple[dict, int]:
        events = EventAccumulator(str(tmp_path))
        events.Reload()
        tags = events.PluginTagToContent(metadata.PLUGIN_NAME)
        start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        end = metadata.parse_session_end_info_plugin_data(tags[metadata.SESSION_END_INFO_TAG])
        return {k: v.string_value or v.number_value for k, v in start.hparams.items()}, end.status

    assert read() == ({"optimizer": "adamw", "optimizer.lr": 0.01, "status": "running"}, api_pb2.STATUS_RUNNING)
    session.write("interrupted", {"final/val/acc": 0.5}, step=7)
    assert read() == ({"optimizer": "adamw", "optimizer.lr": 0.01, "status": "interrupted"}, api_pb2.STATUS_UNKNOWN)
    assert events_scalar(tmp_path, "final/val/acc") == (7, 0.5)
    assert len(list(tmp_path.iterdir())) == 1  # rewritten in place, nothing left beside it


def events_scalar(folder: Path, tag: str) -> tuple[int, float]:
    events = EventAccumulator(str(folder))
    events.Reload()
    last = events.Scalars(tag)[-1]
    return last.step, last.value


def test_mlflow_holds_the_params_metrics_and_status(logdir, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dir = logdir / "single"
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("optbench").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["optbench.status"] == "completed"
    assert run.data.tags["optbench.run_dir"] == str(run_dir.resolve())
    assert run.info.run_name == (run_dir / "tb").iterdir().__next__().name  # the name TensorBoard shows
    assert run.data.params["optimizer.lr"] == "0.002" and run.data.params["trainer.max_steps"] == "6"
    # The same numbers at the same steps as metrics.jsonl (and TensorBoard).
    lines = read_metrics(run_dir)
    for split, name, tag in (("train", "loss", "train/loss"), ("val", "acc", "val/acc")):
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag)]
        assert history == [(m["step"], pytest.approx(m[name])) for m in lines if m["split"] == split]
    assert run.data.metrics["best/val/acc"] == pytest.approx(read_summary(run_dir)["best"]["val/acc"])


def test_mlflow_missing_is_refused_with_how_to_install_it(tmp_path, monkeypatch, capsys):
    from optbench.commands.run import run

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    assert run([*TINY, "trainer.mlflow=true", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "trainer.mlflow=true: the mlflow package is not installed; pip install 'optbench[mlflow]'" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_every_third_party_import_is_a_declared_dependency():
    """scipy (report's t-tests, compare's Halton search) among them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {r.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}
    distributions = packages_distributions()
    imported = set()
    for path in (ROOT / "optbench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported - set(sys.stdlib_module_names) if name != "optbench"}
    undeclared = {name for name in third_party
                  if not {d.lower() for d in distributions.get(name, [name])} & declared}
    assert "scipy" in third_party and not undeclared, undeclared


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from optbench.config import job_config
    from optbench.trainer import Trainer

    quiet = ["trainer.progress=false", "trainer.tensorboard=false", "trainer.mlflow=true", "trainer.log_every=2"]
    Trainer(job_config([*quiet, "trainer.max_steps=4"]), tmp_path).fit()
    Trainer(job_config([*quiet, "trainer.max_steps=8", "trainer.resume=auto"]), tmp_path).fit()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("optbench").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 4, 6, 8]
    assert run.info.status == "FINISHED" and run.data.params["trainer.max_steps"] == "4"  # params of its start
