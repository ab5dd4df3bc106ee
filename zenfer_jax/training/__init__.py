"""The training job: state, steps, optimizer, losses, metrics, the loop, devices and processes."""
