"""Using a trained model: evaluation, prediction, export, the runtimes of exported files, faces."""
