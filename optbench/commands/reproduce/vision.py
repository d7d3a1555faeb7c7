"""Claims of the chapter (being written)."""

from optbench.commands.reproduce.claim import Claim

CLAIMS: list[Claim] = []
