"""Helpers for the demo and the tests: a local MQTT broker."""
