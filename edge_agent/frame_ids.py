"""Frame ids that keep rising across agent restarts, so a subscriber that counts verdicts by frame id never sees
one twice: the outbox replays the last run's unsent verdicts after a restart, beside the new run's."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edge_agent.errors import AgentError

log = logging.getLogger(__name__)

# Ids are handed out in blocks and only the end of the current block is on disk: one small write every
# BLOCK frames (5.5 minutes at 30 fps), and a crash skips the rest of its block instead of repeating ids.
BLOCK = 10_000


class FrameIdError(AgentError):
    pass


class FrameIds:
    """`next()` gives 1, 2, 3, ... on a new file, and on a restart continues above every id given before.
    Called from the acquisition thread only."""

    def __init__(self, path: Path, block: int = BLOCK) -> None:
        self.path = path
        self._block = block
        self._next = self._read() + 1
        self._reserved = self._next - 1  # nothing reserved yet: the first next() writes a block end

    def _read(self) -> int:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise FrameIdError(
                f"cannot read the frame id counter {self.path}: {exc}; make it readable for the agent's user"
            ) from None
        try:
            return int(text.strip())
        except ValueError:
            raise FrameIdError(
                f"frame id counter {self.path} holds {text.strip()[:20]!r}, not a number; delete it to count from 1 "
                "again (subscribers may then see frame ids that an earlier run used)"
            ) from None

    def _reserve(self, end: int) -> None:
        """Writes the block end to a new file and renames it over the old one, so a power cut leaves one or
        the other, never half a number."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".new")
        with partial.open("w") as f:
            f.write(f"{end}\n")
            f.flush()
            os.fsync(f.fileno())
        partial.replace(self.path)
        self._reserved = end

    def next(self) -> int:
        if self._next > self._reserved:
            end = self._next + self._block - 1
            try:
                self._reserve(end)
            except OSError as exc:  # a full or read-only disk must not stop the line: ids stay unique in this run
                log.error(
                    "could not write the frame id counter %s (%s); a restart may repeat frame ids", self.path, exc
                )
                self._reserved = end
        frame_id = self._next
        self._next += 1
        return frame_id


def frame_ids_path(outbox: Path) -> Path:
    """Beside the camera's outbox: the same folder, and the same one owner (one agent process per camera)."""
    return outbox.with_name(outbox.name.replace("outbox-", "frame-ids-", 1).removesuffix(".sqlite") + ".txt")
