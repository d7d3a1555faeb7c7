"""The front-ends of the `optbench` commands and what they share (`common`)."""
