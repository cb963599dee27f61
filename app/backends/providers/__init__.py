"""The hosted providers, one module per protocol, each a subclass of the remote template.

``segmind`` (with ``segmind_params``, its per-model mapping, and ``segmind_sync``, its v1 sync
mode), ``apiframe``, ``wireflow`` (with ``wireflow_graph``, its guide's workflow, execution and
answers as data), ``replicate`` and ``cog`` (sharing ``clarity_inputs``, the Replicate/Cog
input schema of the Clarity model) and ``fal``, each built on :mod:`app.backends.remote`.
Outside this package only their tests import them by name: the registry
(:mod:`app.backends.registry`) says which class runs each backend and the provider pool imports
it on first use, so this face is empty.
"""
