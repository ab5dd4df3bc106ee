"""`python -m zenfer_jax.serve`: the same program as the `zenfer-serve` command."""

import sys

from zenfer_jax.serve.server import main

if __name__ == '__main__':
  sys.exit(main())
