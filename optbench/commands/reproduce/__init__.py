"""`optbench reproduce`: the chapter's measurable claims, each checked by an experiment, with a verdict.

    optbench reproduce --list                     # every claim: number, name, section, statement
    optbench reproduce                            # all claims at proxy scale (about 30 min on 2 cores)
    optbench reproduce momentum 19 scale=proxy    # some claims, by name or number
    optbench reproduce scale=full data.root=DIR   # the chapter's own settings where data and hardware allow
    optbench reproduce scale=full trainer.max_steps=10  # rehearse the full plan in minutes
    optbench reproduce --out DIR                  # the same folder again: finished claims are kept,
                                                  # interrupted sweeps resume

Scales: `proxy` (default) runs each claim on a CPU-sized stand-in; `full` at the chapter's
settings: the claims on CIFAR-10 or ImageNet run the chapter's recipes on them when the data set
is under `data.root` (CIFAR-10 in DIR as `data=cifar10` reads it, ImageNet in DIR/imagenet; the
configs' ~/data by default) and a CUDA GPU is present, and otherwise say which of the two is
missing and name the command that checks them; `smoke` runs every claim for a few steps, to test
the machinery (its verdicts mean nothing). `trainer.*` overrides (trainer.device=cuda:1,
trainer.max_steps=10) go to every training run the claims start, after the claims' own.

The folder (`--out`, default `outputs/reproduce/DATE/TIME`) gets one folder per claim holding its
sweeps (ordinary run folders: `optbench report` works on them), its commands' outputs and
figures, and at the top `claims.json` and `claims.md`.

Verdicts: reproduced; not reproduced (with what was seen instead); proxy only (the rule held on
a CPU-scale stand-in, named); out of reach (needs data or hardware this machine lacks).
"""

from __future__ import annotations

import importlib
import json
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from optbench.commands.common import reports_bad_input, timestamped_output, writable_folder
from optbench.commands.reproduce.claim import OUTCOME, SCALES, Claim, ClaimFailed, Context, claim_folder
from optbench.errors import ConfigError

# The modules that declare claims (`CLAIMS`), by theme of the chapter.
CLAIM_MODULES = ("first_order", "memory", "large_batch", "schedules", "training", "vision")
PLAN = "reproduce.json"


def all_claims() -> list[Claim]:
    """Every claim, by number. Claim modules import torch only inside their checks, so that
    `--list` answers at once."""
    claims = [claim for module in CLAIM_MODULES
              for claim in importlib.import_module(f"optbench.commands.reproduce.{module}").CLAIMS]
    return sorted(claims, key=lambda claim: claim.number)


@dataclass
class Request:
    """What the command line asks for."""

    wanted: list[str] = field(default_factory=list)  # claims by number or name; none: all
    scale: str = "proxy"
    out: Path | None = None
    listing: bool = False
    data_root: str | None = None  # data.root=DIR
    passed: list[str] = field(default_factory=list)  # trainer.* overrides


PASSED = "trainer."  # the overrides passed on to every training run


def parse(args: list[str]) -> Request:
    wanted: list[str] = []
    scale, out, listing, data_root, passed = "proxy", None, False, None, []
    i = 0
    while i < len(args):
        arg, i = args[i], i + 1
        if arg in ("--list", "-l"):
            listing = True
        elif arg == "--out" or arg.startswith("--out="):
            if "=" in arg:
                out = arg.split("=", 1)[1]
            elif i < len(args):
                out, i = args[i], i + 1
            else:
                raise ConfigError("--out: needs a folder.")
            out = writable_folder("--out", out)
        elif arg.startswith("scale="):
            scale = arg.split("=", 1)[1]
            if scale not in SCALES:
                raise ConfigError(f"scale={scale}: one of {', '.join(SCALES)} (proxy: CPU-sized stand-ins, "
                                  f"the default; full: the chapter's settings; smoke: a few steps each).")
        elif arg.startswith("data.root="):
            data_root = arg.split("=", 1)[1]
            if not data_root:
                raise ConfigError("data.root=: needs a folder (where cifar-10-batches-py/ and imagenet/ are).")
        elif arg.startswith(PASSED) and "=" in arg:
            passed.append(arg)
        elif arg.startswith("-"):
            raise ConfigError(f"{arg}: no such flag. Flags: --list, --out DIR; and scale=proxy|full|smoke, "
                              f"data.root=DIR, trainer.KEY=VALUE, CLAIM...")
        elif "=" in arg:
            raise ConfigError(f"{arg}: reproduce takes scale=, data.root= and trainer.KEY=VALUE overrides (the "
                              f"claims set the rest of their experiments themselves).")
        else:
            wanted.append(arg)
    if passed:  # refused now, not by the first sweep after other claims ran
        from optbench.config import job_config

        job_config(["model=mlp", "data=digits", *passed])
    return Request(wanted, scale, out, listing, data_root, passed)


def select(wanted: list[str], claims: list[Claim]) -> list[Claim]:
    """The claims named (by number or name), in the chapter's order; all of them when none is."""
    if not wanted:
        return claims
    by_key = {str(c.number): c for c in claims} | {c.name: c for c in claims}
    unknown = [w for w in wanted if w not in by_key]
    if unknown:
        import difflib

        hints = [f" (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, by_key, 1)) else "" for u in unknown]
        names = ", ".join(f"{c.number} {c.name}" for c in claims)
        raise ConfigError([f"CLAIM={u}: no such claim{h}" for u, h in zip(unknown, hints)]
                          + [f"claims (number or name): {names}; `optbench reproduce --list` describes each."])
    chosen = {by_key[w].number for w in wanted}
    return [c for c in claims if c.number in chosen]


def print_list(claims: list[Claim]) -> None:
    for claim in claims:
        print(f"{claim.number:>2} {claim.name:<20} [{claim.section}] {claim.statement}")
        print(f"   {'':<20} rule: {claim.rule}")


def open_folder(out: Path, scale: str) -> None:
    """Create the folder, or check that the one given holds a reproduction at the same scale."""
    plan = out / PLAN
    if plan.exists():
        earlier = json.loads(plan.read_text())
        if earlier.get("scale") != scale:
            raise ConfigError(f"scale={scale}: {out} holds a reproduction at scale={earlier.get('scale')}; "
                              f"continue it with that scale, or choose another --out.")
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out={out}: that folder holds something other than a reproduction (no {PLAN}); "
                          f"choose another. optbench never overwrites a run.")
    out.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps({"scale": scale}, indent=1) + "\n")


def check_claim(claim: Claim, out: Path, request: Request) -> dict | None:
    """The claim's record: read back from an earlier call, or its experiment run now. None when
    the experiment failed (said on stderr); a re-run tries it again."""
    folder = claim_folder(out, claim)
    done = folder / OUTCOME
    if done.exists():
        print(f"optbench reproduce: claim {claim.number} ({claim.name}): kept from {done}", file=sys.stderr)
        return json.loads(done.read_text())
    print(f"optbench reproduce: claim {claim.number} ({claim.name}) [{claim.section}]...", file=sys.stderr)
    context = Context(request.scale, folder, request.data_root, request.passed)
    start = time.perf_counter()
    try:
        outcome = claim.check(context)
    except (ClaimFailed, ConfigError, Exception) as e:  # one claim's failure costs the others nothing
        if isinstance(e, ConfigError):
            text = e.render()
        elif isinstance(e, ClaimFailed):
            text = str(e)
        else:
            text = "".join(traceback.format_exception(e))
        print(f"optbench reproduce: claim {claim.number} ({claim.name}) could not be checked: {text}", file=sys.stderr)
        return None
    record = {**claim.record(), **vars(outcome), "seconds": round(time.perf_counter() - start, 1),
              "runs": [str(p.relative_to(out)) for p in dict.fromkeys(context.run_folders)],
              "images": [str(p.relative_to(out)) for p in context.images]}
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(record, indent=1) + "\n")
    print(f"optbench reproduce: claim {claim.number} ({claim.name}): {outcome.verdict}. {outcome.seen}", file=sys.stderr)
    return record


@reports_bad_input
def main(args: list[str]) -> int:
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    request = parse(args)
    claims = select(request.wanted, all_claims())
    if request.listing:
        print_list(claims)
        return 0
    from optbench.commands.reproduce.records import write_records

    out = request.out or timestamped_output("reproduce")
    open_folder(out, request.scale)
    command = shlex.join(["optbench", "reproduce", *args])
    failed = []
    for claim in claims:
        if check_claim(claim, out, request) is None:
            failed.append(claim)
        write_records(out, all_claims(), request.scale, command)
    print(f"wrote {out / 'claims.json'}\nwrote {out / 'claims.md'}")
    if failed:
        print(f"optbench reproduce: no verdict for {', '.join(c.name for c in failed)} (see above); "
              f"`optbench reproduce --out {out} ...` tries again and keeps the rest.", file=sys.stderr)
        return 1
    return 0
