"""The shipped configs, one file each, in the package so that an installed copy has them.

`--config=NAME` loads `NAME.py` from here, by path (`zenfer_jax.config.files`); nothing imports
this package to train. The repository's `configs/` is a link to this folder, so
`--config=configs/rafdb_m.py` names the same file.
"""
