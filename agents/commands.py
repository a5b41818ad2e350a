"""What a person can tell the factory to do: one pydantic union, declared once.

The engine executes a command (`Factory.execute`), the daemon parses a console's request
into one, and both clients build one: the in-process client hands it to the engine, the
attached client sends its fields, which the daemon parses with this very model. So a
command's name, arguments and their types exist in one place, and every way of giving a
command checks it the same way.

Each command is recorded, with who gave it, before it takes effect (`command_given`);
one the state refuses is recorded too (`command_refused`), and its error says why.
Reads (a snapshot, events, spec files, a diff) are not commands: they change nothing.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter
from pydantic_core import PydanticCustomError

# The largest integer a JSON reader keeps exactly (SQLite, where some end up, stops at 2**63).
MAX_INT = 2**53 - 1
Int = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise PydanticCustomError("nul", "holds no NUL character")
    return text


PathText = Annotated[str, AfterValidator(_no_nul)]  # the OS refuses a path with a NUL in it
_Text = Annotated[str, StringConstraints(max_length=4 * 1024 * 1024)]
_Key = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def recorded(self) -> dict[str, Any]:
        """The arguments as the log keeps them."""
        return self.model_dump(mode="json", exclude={"op"})


class Approve(_Command):
    """Let a queue entry that waits for a person land."""

    op: Literal["approve"] = "approve"
    key: _Key


class Reject(_Command):
    """Refuse a queue entry, with the reason its agent and the log keep."""

    op: Literal["reject"] = "reject"
    key: _Key
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class Move(_Command):
    """Move a waiting queue entry up (negative) or down."""

    op: Literal["move"] = "move"
    key: _Key
    delta: Int


class Retry(_Command):
    """Put a rejected branch back in the queue."""

    op: Literal["retry"] = "retry"
    key: _Key


class CancelTask(_Command):
    """Stop a task's agent (or cancel a task nothing works on)."""

    op: Literal["cancel_task"] = "cancel_task"
    key: _Key


class AnswerQuestion(_Command):
    """Answer the question an agent asked."""

    op: Literal["answer"] = "answer"
    question_id: _Key
    text: Annotated[str, StringConstraints(max_length=20_000)]


class StartRun(_Command):
    """Run specs (all of them when none is named), in the background."""

    op: Literal["run"] = "run"
    spec_ids: list[_Key] | None = None


class SaveSpec(_Command):
    """Write a spec file (atomically) and lint it."""

    op: Literal["save_spec"] = "save_spec"
    path: PathText
    text: _Text

    def recorded(self) -> dict[str, Any]:
        """The file and what was written, not the whole text (the file holds it)."""
        return {"path": self.path, "bytes": len(self.text.encode()),
                "digest": hashlib.sha256(self.text.encode()).hexdigest()[:16]}


Command = Annotated[Approve | Reject | Move | Retry | CancelTask | AnswerQuestion | StartRun
                    | SaveSpec, Field(discriminator="op")]
COMMANDS: tuple[type[_Command], ...] = (Approve, Reject, Move, Retry, CancelTask,
                                        AnswerQuestion, StartRun, SaveSpec)
BY_OP: dict[str, type[_Command]] = {c.model_fields["op"].default: c for c in COMMANDS}
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
