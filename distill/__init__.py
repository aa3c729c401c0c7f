"""The `distill` command line: the entry point at the top of the layers (see docs/architecture.md)."""
