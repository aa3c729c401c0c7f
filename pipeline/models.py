"""The run's teacher and judge, opened when a stage first needs them and closed together."""

from __future__ import annotations

import contextlib
from pathlib import Path

from backends.base import ChatBackend
from backends.config import ModelEndpoint
from backends.registry import open_chat_backend
from pipeline.config import PipelineConfig


class ModelSessions:
    """Teacher and judge backends, opened when a stage first needs them and closed together.

    The judge defaults to the teacher and then shares its backend (and its embedded server);
    so does any other endpoint (an evaluation's judges) configured like the teacher or the judge.
    """

    def __init__(self, config: PipelineConfig, log_dir: Path):
        self.config = config
        self.log_dir = log_dir
        self._stack = contextlib.ExitStack()
        self._teacher: ChatBackend | None = None
        self._judge: ChatBackend | None = None
        self._others: dict[str, ChatBackend] = {}

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

    def endpoint(self, endpoint: ModelEndpoint, name: str) -> ChatBackend:
        """The backend of another endpoint (an evaluation's judge, say), opened on first use; the
        teacher's or the judge's when it is configured like one of them. `name` names its log folder."""
        if endpoint == self.config.teacher:
            return self.teacher()
        if endpoint == self.config.judge_endpoint:
            return self.judge()
        key = endpoint.model_dump_json()
        if key not in self._others:
            self._others[key] = self._stack.enter_context(open_chat_backend(endpoint, self.log_dir / name))
        return self._others[key]

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "ModelSessions":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
