"""cljax: continual-learning experiments in JAX, R repeats vmapped, one compiled program per task."""

__version__ = "0.1.0"

DEFAULT_COMPILATION_CACHE = "~/.cache/cljax/jax"


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache, so a second run of the same program (same
    config shapes, same jax version) loads its executables from disk instead of compiling.

    ``path``: the cache folder; default ``$CLJAX_COMPILATION_CACHE``, else ~/.cache/cljax/jax.
    ``CLJAX_COMPILATION_CACHE=off`` (or ``0``, or empty) disables it, and a folder already set
    through JAX's own ``JAX_COMPILATION_CACHE_DIR`` is kept. Returns the folder in use, or None.
    The ``cljax`` command calls this; library callers opt in. Note that compilations served from
    the cache emit no ``backend_compile`` event."""
    import os

    import jax

    if path is None:
        if jax.config.jax_compilation_cache_dir:
            return jax.config.jax_compilation_cache_dir
        path = os.environ.get("CLJAX_COMPILATION_CACHE", DEFAULT_COMPILATION_CACHE)
    if path.strip().lower() in ("", "0", "off", "false", "no", "none"):
        return None
    path = os.path.abspath(os.path.expanduser(path))
    # A file, a device or an unwritable place: JAX would warn at each compilation and cache nothing.
    reason = "it is not a folder" if os.path.exists(path) and not os.path.isdir(path) else None
    if reason is None:
        try:
            os.makedirs(path, exist_ok=True)
            from cljax.safe_files import cannot_create_in

            reason = cannot_create_in(path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
    if reason is not None:
        import sys

        print(f"warning: the compilation cache {path} cannot be used ({reason}): compiling without it; set "
              f"CLJAX_COMPILATION_CACHE (or the cache folder given) to a writable folder, or to off.", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    _recheck_cache()
    # Cache every program that took measurable time (the task program takes seconds; the
    # default threshold of 1 s would skip the evaluation program on a fast machine).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def disable_compilation_cache() -> None:
    """Turn the persistent compilation cache off again in this process."""
    import jax

    jax.config.update("jax_compilation_cache_dir", None)
    _recheck_cache()


def _recheck_cache() -> None:
    # JAX decides once per process, at its first compilation, whether the cache is in use; make
    # it decide again so that a change after that point takes effect.
    try:
        from jax._src import compilation_cache

        compilation_cache.reset_cache()
    except (ImportError, AttributeError):
        pass
