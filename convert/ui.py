"""Progress and messages: rich bars on a terminal, plain lines elsewhere, nothing when quiet."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol


class Task(Protocol):
    """A running progress task."""

    def total(self, n_bytes: int) -> None: ...
    def advance(self, n_bytes: int) -> None: ...
    def tensor_done(self) -> None: ...


class UI(Protocol):
    """What the converter reports to."""

    def warn(self, msg: str) -> None: ...
    def step(self, msg: str) -> None: ...
    def task(self, label: str, n_bytes: int, n_tensors: int | None) -> contextlib.AbstractContextManager[Task]: ...


class _NullTask:
    def total(self, n_bytes: int) -> None:
        pass

    def advance(self, n_bytes: int) -> None:
        pass

    def tensor_done(self) -> None:
        pass


class QuietUI:
    """For library use: warnings are kept in `warnings`, nothing is printed."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def step(self, msg: str) -> None:
        pass

    @contextlib.contextmanager
    def task(self, label: str, n_bytes: int, n_tensors: int | None) -> Iterator[Task]:
        yield _NullTask()


class _RichTask:
    def __init__(self, progress: object, task_id: int, label: str, n_tensors: int | None) -> None:
        self.p, self.id, self.label, self.n, self.done = progress, task_id, label, n_tensors, 0

    def total(self, n_bytes: int) -> None:
        self.p.update(self.id, total=n_bytes)  # type: ignore[attr-defined]

    def advance(self, n_bytes: int) -> None:
        self.p.advance(self.id, n_bytes)  # type: ignore[attr-defined]

    def tensor_done(self) -> None:
        self.done += 1
        self.p.update(self.id, description=f"{self.label} {self.done}/{self.n} tensors")  # type: ignore[attr-defined]


class ConsoleUI:
    """stderr: warnings and steps as lines, a rich progress bar while converting on a TTY."""

    def __init__(self) -> None:
        from rich.console import Console  # noqa: PLC0415

        self.console = Console(stderr=True, highlight=False)
        self.live = self.console.is_terminal
        self.warnings: list[str] = []

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        if self.live:  # above any progress bar, unwrapped
            self.console.print(f"warning: {msg}", markup=False, soft_wrap=True)
        else:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    def step(self, msg: str) -> None:
        if self.live:  # off a terminal stderr carries only warnings and errors
            self.console.print(msg, markup=False)

    @contextlib.contextmanager
    def task(self, label: str, n_bytes: int, n_tensors: int | None) -> Iterator[Task]:
        if not self.live:
            yield _NullTask()
            return
        from rich.progress import (  # noqa: PLC0415
            BarColumn, DownloadColumn, Progress, TextColumn,
            TimeRemainingColumn, TransferSpeedColumn,
        )

        cols = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                TransferSpeedColumn(), TimeRemainingColumn()]
        with Progress(*cols, console=self.console, transient=True) as p:
            desc = f"{label} 0/{n_tensors} tensors" if n_tensors else label
            yield _RichTask(p, p.add_task(desc, total=n_bytes or None), label, n_tensors)
