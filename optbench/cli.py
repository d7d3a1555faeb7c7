"""The `optbench` command. Only the standard library and optbench's light command helpers are
imported here, so that `--help` and `list` answer at once; each subcommand imports what it needs
(torch included) when it runs."""

from __future__ import annotations

import atexit
import difflib
import gc
import importlib
import os
import sys
from collections.abc import Callable

from optbench import __version__
from optbench.commands.common import reports_bad_input
from optbench.errors import ConfigError


def _skip_exit_collections() -> None:
    """At exit CPython runs full garbage collections while it tears the modules down: with torch
    and its compiler stack loaded, about half a second of every command, for memory the OS frees
    anyway. Frozen objects are skipped by them; the atexit handlers registered after this one run
    before it. Not in a process of a data-parallel run or one that used CUDA: their libraries'
    teardown relies on those collections (a rank of a 2-process gloo run aborted with SIGABRT)."""
    torch = sys.modules.get("torch")
    if "WORLD_SIZE" in os.environ or (torch is not None and torch.cuda.is_initialized()):
        return
    gc.freeze()


atexit.register(_skip_exit_collections)

USAGE = """usage: optbench COMMAND [OVERRIDES...]

Train and compare deep-learning optimizers. Configuration is Hydra's: choose an option with
group=NAME (optimizer=adamw), set a field with group.field=VALUE (optimizer.lr=3e-4).

commands:
{commands}

Examples:
  optbench run optimizer=adamw scheduler=warmup_cosine
  optbench run -m optimizer=sgd,adamw optimizer.lr=1e-3,3e-3
  optbench compare optimizer=sgd,adamw,lion,lamb budget.trials=16 budget.seeds=3
  optbench run recipe=digits_resnet20 trainer.max_steps=200
  optbench list optimizers
  optbench reproduce --list
  optbench list param-groups model=resnet params=layer_decay

`optbench run --help` lists every config group and option; `optbench run --cfg job` prints the
resolved config without running it."""

COMMANDS = {
    "run": "train one configuration; -m/--multirun sweeps (a Hydra app)",
    "lr-find": "LR range test: plot, CSV and a suggested LR",
    "schedules": "plot LR schedules without training",
    "toy": "optimizers on 2-D test functions",
    "compare": "equal-budget comparison: same quasi-random search for each optimizer, best over seeds",
    "report": "compare finished runs: table, CSV, plots, report.html",
    "reproduce": "the chapter's claims, each checked by an experiment, with a verdict",
    "check": "validate a configuration without running it",
    "bench": "optimizer step time and state memory, side by side",
    "list": "what can be chosen (models, data, optimizers, ...); `list param-groups` per parameter",
    "completion": "shell completion: `source <(optbench completion bash)` (or zsh, fish)",
}



def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = "\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items())
    return USAGE.format(commands=lines)


def _lazy(module: str, function: str = "main") -> Callable[[list[str]], int]:
    """The command `optbench.commands.<module>.<function>(args)`, imported only when it runs (torch with it)."""

    def command(args: list[str]) -> int:
        return getattr(importlib.import_module(f"optbench.commands.{module}"), function)(args)

    return command


HANDLERS: dict[str, Callable[[list[str]], int]] = {
    "run": _lazy("run", "run"),
    "check": _lazy("run", "check"),
    "list": _lazy("listing", "list_options"),
    "schedules": _lazy("schedules"),
    "bench": _lazy("bench"),
    "report": _lazy("report"),
    "lr-find": _lazy("lr_find"),
    "toy": _lazy("toy"),
    "compare": _lazy("compare"),
    "reproduce": _lazy("reproduce"),
    "completion": _lazy("completion", "print_script"),
    "__complete": _lazy("completion", "query"),  # what the completion scripts run at each TAB
}


@reports_bad_input
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = dispatch(args)
        sys.stdout.flush()  # here, not at exit: a reader that has gone raises inside this try
        return code
    except BrokenPipeError:  # `optbench list | head -1`: the reader has gone, so stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 1


def dispatch(args: list[str]) -> int:
    """Run the command that `args` name; its exit status."""
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"optbench {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in HANDLERS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown command {command!r}.{hint} Commands: {', '.join(COMMANDS)}.")
    return HANDLERS[command](rest)
