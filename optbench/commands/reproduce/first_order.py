"""Claims of the chapter's first-order methods: SGD, momentum, Nesterov, Adam, AdamW, RMSprop."""

from __future__ import annotations

import statistics

from optbench.commands.reproduce.claim import Claim, Context, Outcome, verdict

TARGET_LOSS = 1e-3  # the sgd_variants recipe's target: validation loss = squared distance to the optimum


def steps_to(run, target: float) -> int | None:  # type: ignore[no-untyped-def]
    """The first step whose validation loss is below `target`; None when the run never got there."""
    return next((step for step, loss in sorted(run.series("val", "loss").items()) if loss < target), None)


def momentum_beats_sgd(ctx: Context) -> Outcome:
    seeds = ctx.pick(smoke=[0], proxy=[0, 1, 2])
    runs = ctx.sweep("runs", [[f"optimizer={name}", f"trainer.seed={seed}"]
                              for name in ("sgd", "momentum", "nesterov") for seed in seeds],
                     ["recipe=sgd_variants", *ctx.pick(smoke=["smoke=true"], proxy=[])])
    reached = {name: [steps_to(r, TARGET_LOSS) for r in runs if r.value("optimizer") == name]
               for name in ("sgd", "momentum", "nesterov")}
    budget = max(r.summary.get("steps", 0) for r in runs)

    def slower(a: int | None, b: int | None) -> bool:  # `a` took more steps than `b` (None: never)
        return b is not None and (a is None or a > b)

    held = all(slower(s, m) and slower(s, n)
               for s, m, n in zip(reached["sgd"], reached["momentum"], reached["nesterov"]))
    shown = {name: ", ".join("never" if s is None else str(s) for s in steps) for name, steps in reached.items()}
    final = statistics.median(r.summary.get("final", {}).get("val/loss", float("nan"))
                              for r in runs if r.value("optimizer") == "sgd")
    return Outcome(
        verdict=verdict(held, proxy=False),
        seen=(f"steps to validation loss < {TARGET_LOSS:g} (seeds {', '.join(map(str, seeds))}; budget {budget}): "
              f"SGD {shown['sgd']} (median final loss {final:.2g}), momentum {shown['momentum']}, "
              f"Nesterov {shown['nesterov']}."),
        workload=f"recipe sgd_variants: least squares with condition number 100, lr 0.1, momentum 0.9, "
                 f"{budget} steps, {len(seeds)} seed(s)",
        figures={"steps_to_target": reached, "budget": budget, "sgd_median_final_loss": final},
    )


CLAIMS = [
    Claim(1, "momentum", "2.1-2.3",
          "Momentum and Nesterov converge faster than plain SGD on an ill-conditioned problem.",
          f"On the sgd_variants quadratic (condition 100, the same lr 0.1, momentum 0.9), in every seed (3) both "
          f"momentum and Nesterov reach validation loss < {TARGET_LOSS:g} in fewer steps than SGD "
          f"(SGD never reaching it counts as slower).",
          momentum_beats_sgd),
]
