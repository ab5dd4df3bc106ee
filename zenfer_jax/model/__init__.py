"""The network: the structure language, its layer plan, the Flax ZenNet, its layers and counters."""
