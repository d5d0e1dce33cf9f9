"""The edge agent, and the numpy-only contract that the trainer, the converters and the agent all build on.

The shared modules: `edge_agent.archive` (heatmap overlays), `edge_agent.bundle` (the bundle format),
`edge_agent.console` (CLI and logging glue), `edge_agent.geometry` (letterbox and tiles), `edge_agent.hashing`
(file digests), `edge_agent.imageio` (reading images) and `edge_agent.runtimes.base` (the runtime interface).
They import no torch, no inference runtime and no camera or MQTT library, so all three tools can use them.
They live here, not in the trainer, because the agent is the lightest install: a factory PC gets `.[agent]`
only, and what the agent needs must not pull in the training stack (tests/edge_agent/test_imports.py).
"""
