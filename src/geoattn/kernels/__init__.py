"""The Triton kernels of geometric attention, one module per kind of kernel.

- :mod:`.common`: the ``@triton.jit`` helpers every kernel inlines (loads, the score,
  the key and pair masks);
- :mod:`.streaming`: the forward and the two backward kernels for any L, streaming key
  (or query) blocks with an online softmax;
- :mod:`.small`: the short-sequence kernels (L ≤ 32), several heads per program, the
  whole score tile at once;
- :mod:`.configs`: the launch shapes searched by the autotuner;
- :mod:`.offline`: compiling the kernels offline and reading their SASS (no GPU needed);
- :mod:`.launch`: the launchers, the autograd Function and ``impl="triton"``'s entry
  (``geoattn.triton_kernels`` is an alias of it for one release).

Only :mod:`.launch` imports the kernel modules, and only it is imported by the
dispatcher for ``impl="triton"``: ``import geoattn`` never needs Triton.
"""
try:
    import triton  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "impl='triton' needs the triton package (pip install 'geoattn[triton]'); "
        "use impl='chunked' on machines without it"
    ) from err
