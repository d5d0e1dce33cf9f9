"""Commands to a running agent, from MQTT (`<prefix>/<station>/cmd/<verb>`) or SIGHUP: reload the model,
pause and resume inspection, take a snapshot. They run on a thread of their own, so a model that takes
seconds to compile holds up neither the MQTT network thread nor the inspection loop."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from edge_agent.model import LoadedModel

log = logging.getLogger(__name__)

Verb = Literal["reload", "pause", "resume", "snapshot"]
VERBS: tuple[Verb, ...] = ("reload", "pause", "resume", "snapshot")
EventSink = Callable[[str, dict[str, Any]], None]


class CommandError(ValueError):
    pass


@dataclass(frozen=True)
class Command:
    verb: Verb
    path: Path | None = None  # reload only: another edge bundle; None reloads the configured path
    camera: str | None = None  # None: every camera of the station


def parse_command(verb: str, payload: bytes) -> Command:
    """An MQTT command: the verb from the topic, an optional JSON object {"camera": ..., "path": ...}."""
    if verb not in VERBS:
        raise CommandError(f"unknown command '{verb}'; commands are {', '.join(VERBS)}")
    body: Any = {}
    if payload.strip():
        try:
            body = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CommandError(f"command '{verb}': the payload must be empty or a JSON object") from None
    if not isinstance(body, dict):
        raise CommandError(f"command '{verb}': the payload must be empty or a JSON object")
    unknown = set(body) - {"camera", "path"}
    if unknown:
        raise CommandError(f"command '{verb}': unknown key(s) {', '.join(sorted(unknown))}; known: camera, path")
    camera, path = body.get("camera"), body.get("path")
    if camera is not None and not isinstance(camera, str):
        raise CommandError(f"command '{verb}': 'camera' must be a camera name")
    if path is not None and (verb != "reload" or not isinstance(path, str) or not path):
        raise CommandError(f"command '{verb}': 'path' is for reload only, and names an edge bundle folder")
    return Command(verb, None if path is None else Path(path), camera)


class Controllable(Protocol):
    """What the controller drives: the inspection loop."""

    @property
    def model_version(self) -> str: ...

    def swap(self, model: LoadedModel) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def request_snapshot(self, events: EventSink) -> None: ...


class Controller:
    """Runs commands one at a time, in order, and reports each outcome as an event."""

    def __init__(
        self,
        camera: str,
        target: Controllable,
        load: Callable[[Path], LoadedModel],
        model_path: Path,
        events: EventSink,
        reload_dirs: Sequence[Path] = (),
    ) -> None:
        self.camera = camera
        self._target = target
        self._load = load
        self._model_path = model_path
        self._events = events
        # Resolved once: a folder renamed or relinked later does not widen what a command may load.
        self._reload_dirs = [d.resolve() for d in reload_dirs]
        self._queue: queue.Queue[Command | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the commands already submitted, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def submit(self, command: Command) -> None:
        """From any thread; commands for another camera of the station are ignored."""
        if command.camera is not None and command.camera != self.camera:
            log.debug("command %s is for camera '%s', not this one", command.verb, command.camera)
            return
        self._queue.put(command)

    def _work(self) -> None:
        while (command := self._queue.get()) is not None:
            try:
                self._run(command)
            except Exception as exc:  # a command must never take the agent down
                log.error("command %s failed: %s", command.verb, exc)
                self._events(f"{command.verb}_failed", {"reason": str(exc)})

    def _run(self, command: Command) -> None:
        if command.verb == "reload":
            if command.path is not None and not self._may_load(command.path):
                return
            self._reload(command.path or self._model_path)
        elif command.verb == "pause":
            self._target.pause()
            log.info("inspection paused by command; until 'resume' each frame is answered not_inspected (paused)")
            self._events("paused", {})
        elif command.verb == "resume":
            self._target.resume()
            log.info("inspection resumed by command")
            self._events("resumed", {})
        else:
            self._target.request_snapshot(self._events)

    def _may_load(self, path: Path) -> bool:
        """A bundle named by a command must lie in one of model.reload_dirs, symlinks followed."""
        if any(path.resolve().is_relative_to(folder) for folder in self._reload_dirs):
            return True
        allowed = ", ".join(map(str, self._reload_dirs)) or "none"
        reason = (
            f"{path} is outside model.reload_dirs ({allowed}); copy the bundle into one of them, or add its folder "
            "to model.reload_dirs in the agent config"
        )
        log.error("model reload refused, still running %s: %s", self._target.model_version, reason)
        self._events("reload_failed", {"path": str(path), "reason": reason, "model": self._target.model_version})
        return False

    def _reload(self, path: Path) -> None:
        previous = self._target.model_version
        log.info("reloading the model from %s", path)
        try:
            model = self._load(path)
        except Exception as exc:  # whatever the new bundle does wrong, the old model keeps running
            log.error("model reload from %s refused, still running %s: %s", path, previous, exc)
            self._events("reload_failed", {"path": str(path), "reason": str(exc), "model": previous})
            return
        self._target.swap(model)
        log.info("model %s loaded from %s; it replaces %s from the next frame", model.info.version, path, previous)
        self._events("reloaded", {"path": str(path), "model": model.info.version, "previous": previous})
