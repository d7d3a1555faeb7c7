"""The one exception type for bad input, and how it reaches the user."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad configuration or input: reported as a message with exit status 2, no traceback.

    Holds one or more problems; each names the key, the value and what is allowed.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def render(self) -> str:
        if len(self.problems) == 1:
            return f"optbench: error: {self.problems[0]}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"optbench: {len(self.problems)} errors in the configuration:\n{lines}"
