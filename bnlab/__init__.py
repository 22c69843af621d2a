"""bnlab: a lab bench for batch normalization and internal covariate shift."""

import os as _os
import sys as _sys

if _sys.dont_write_bytecode and _sys.pycache_prefix is None:
    # PYTHONDONTWRITEBYTECODE is set: instead of compiling JAX, Flax, TFDS... from source
    # at every start (~3 s), keep their bytecode in one folder of this environment,
    # out of every source tree (uv's compile-bytecode re-compiles at every `uv run`,
    # uv#12202). The processes bnlab starts (sweep jobs, Ray's workers and agents) keep
    # theirs there too. Where that folder cannot be written, Python carries on without.
    _sys.pycache_prefix = _os.path.join(_sys.prefix, ".pycache")
    _sys.dont_write_bytecode = False
    _os.environ.setdefault("PYTHONPYCACHEPREFIX", _sys.pycache_prefix)
    _os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
