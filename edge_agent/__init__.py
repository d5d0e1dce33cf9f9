"""The edge agent: camera -> model -> verdict -> MQTT. Never imports torch, trainer or converters."""
