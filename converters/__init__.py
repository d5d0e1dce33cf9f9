"""Bakes trained model bundles into edge bundles for the agent's runtimes."""
