"""Errors the CLI turns into a one-line message and a non-zero exit."""


class AgentError(Exception):
    """A problem the user can fix (bad config, missing bundle, unknown camera)."""


class CameraError(AgentError):
    """The camera failed or disappeared."""


class CameraUnavailable(CameraError):
    """The camera is not there right now (unplugged, powered off, in use): worth retrying, unlike a config error."""


class EndOfStream(Exception):
    """A replay camera has no more frames."""


class BundleError(AgentError):
    """The edge bundle is missing, tampered with or of an unknown format."""
