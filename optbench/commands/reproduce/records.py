"""`claims.json` and `claims.md`: every claim's verdict in one file for scripts and one for people.

Both are rewritten from the claims' own `outcome.json` files after each claim, so that a folder
filled over several calls (some claims now, others later) reports all of them, and an interrupted
reproduction still shows what it has.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from optbench.commands.reproduce.claim import OUTCOME, Claim, claim_folder

NO_VERDICT = "not checked yet"


def write_records(out: Path, claims: list[Claim], scale: str, command: str) -> None:
    outcomes = {claim.number: _outcome(out, claim) for claim in claims}
    machine = _machine()
    record = {"command": command, "scale": scale, "written": datetime.now().isoformat(timespec="seconds"),
              "machine": machine,
              "claims": [outcomes[c.number] or {**c.record(), "verdict": NO_VERDICT} for c in claims]}
    (out / "claims.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "claims.md").write_text(markdown(record))


def _outcome(out: Path, claim: Claim) -> dict[str, Any] | None:
    path = claim_folder(out, claim) / OUTCOME
    return json.loads(path.read_text()) if path.exists() else None


def _machine() -> dict[str, Any]:
    from optbench.provenance import provenance

    found = provenance()
    return {key: found[key] for key in ("host", "cpu", "gpu", "torch", "cuda", "optbench", "git", "python")}


def machine_line(machine: dict[str, Any]) -> str:
    cpu = machine.get("cpu") or {}
    gpu = machine.get("gpu")
    gpus = f"{gpu['count']} x {gpu['model']}" if gpu else "no GPU"
    git = machine.get("git") or {}
    commit = f", git {git['commit'][:10]}{' (uncommitted changes)' if git.get('dirty') else ''}" if git else ""
    return f"{cpu.get('model', 'unknown CPU')} ({cpu.get('count')} cores), {gpus}, torch {machine.get('torch')}{commit}"


def markdown(record: dict[str, Any]) -> str:
    """The table (one line a claim) and, below it, each claim's rule, workload, figures and runs."""
    claims = record["claims"]
    seconds = sum(c.get("seconds", 0) for c in claims)
    lines = [
        "# The chapter's claims, checked",
        "",
        f"`{record['command']}` (scale={record['scale']}) on {machine_line(record['machine'])}; "
        f"written {record['written']}; {seconds / 60:.1f} min of experiments.",
        "",
        "| # | claim [section] | verdict | what was seen |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c['number']} | {_cell(c['statement'])} [{c['section']}] | **{c['verdict']}** | "
              f"{_cell(c.get('seen', ''))} |" for c in claims]
    for c in claims:
        lines += ["", f"## {c['number']}. {c['name']} [{c['section']}]", "",
                  f"- **Chapter:** {c['statement']}", f"- **Rule:** {c['rule']}"]
        if c["verdict"] == NO_VERDICT:
            lines.append(f"- **Verdict:** {NO_VERDICT}")
            continue
        lines += [f"- **Workload:** {c['workload']}", f"- **Verdict:** {c['verdict']}: {c['seen']}"]
        if c.get("figures"):
            lines.append("- **Figures:** " + "; ".join(f"{k} = {_number(v)}" for k, v in c["figures"].items()))
        if c.get("full_scale"):
            lines.append(f"- **At the chapter's scale:** `{c['full_scale']}`")
        if c.get("runs"):
            lines.append("- **Runs and outputs:** " + ", ".join(f"`{r}`" for r in c["runs"])
                         + f" ({c.get('seconds', 0):.0f} s)")
        lines += [f"\n![{c['name']}]({image})" for image in c.get("images", [])]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_number(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    return str(value)
