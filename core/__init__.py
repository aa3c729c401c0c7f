"""The base every other package builds on: record files and journals, the run directory,
settings and errors, and small shared helpers. It imports nothing of the project's."""
