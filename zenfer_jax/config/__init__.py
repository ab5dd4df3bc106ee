"""Reading and checking configs."""
