"""The run's teacher and judge, opened when a stage first needs them and closed together."""

from __future__ import annotations

import contextlib
from pathlib import Path

from backends.base import ChatBackend
from backends.registry import open_chat_backend
from pipeline.config import PipelineConfig


class ModelSessions:
    """Teacher and judge backends, opened when a stage first needs them and closed together.

    The judge defaults to the teacher and then shares its backend (and its embedded server).
    """

    def __init__(self, config: PipelineConfig, log_dir: Path):
        self.config = config
        self.log_dir = log_dir
        self._stack = contextlib.ExitStack()
        self._teacher: ChatBackend | None = None
        self._judge: ChatBackend | None = None

    def teacher(self) -> ChatBackend:
        if self._teacher is None:
            self._teacher = self._stack.enter_context(open_chat_backend(self.config.teacher, self.log_dir))
        return self._teacher

    def judge(self) -> ChatBackend:
        if self.config.judge is None:
            return self.teacher()
        if self._judge is None:
            self._judge = self._stack.enter_context(open_chat_backend(self.config.judge, self.log_dir / "judge"))
        return self._judge

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "ModelSessions":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
