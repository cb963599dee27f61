"""Clarifier's engine as a Cog model: what ``clarifier serve`` runs, and what ``cog push`` ships.

Cog's own runtime (coglet) serves the HTTP prediction API; nothing here is an HTTP server for it.
The room holds what Cog hosts and what stands in front of it:

- :mod:`~app.serve.runner`: the Cog runner, with philz1337x/clarity-upscaler's inputs (the names,
  types, defaults and ranges Replicate publishes), driving the engine through the local backend's
  worker process, so models stay loaded and an out-of-memory kill fails one prediction;
- :mod:`~app.serve.engine`: what the runner does, without Cog: set-up (models found, or fetched
  when the operator accepted their licences; a warm-up run), and one prediction from its inputs;
- :mod:`~app.serve.config`: how it runs, from its environment (the model folders, whether set-up
  may download models) and Clarifier's settings (device, precision, tile, the output cap);
- :mod:`~app.serve.inputs`: Clarity's inputs as :class:`~pipeline.params.UpscaleParams`, and the
  inputs a network client may not send (server-side paths);
- :mod:`~app.serve.fetch`: an image input's bytes from a ``data:`` or http(s) URL, within a size
  limit and never redirected to another scheme;
- :mod:`~app.serve.schema`: the OpenAPI document Cog serves, generated from the runner's
  signature as ``cog build`` generates it (``python -m app.serve.schema``);
- :mod:`~app.serve.gate`: the bearer-token check for a server reachable from the network, a
  forwarding layer on the standard library's HTTP server (coglet checks no tokens).

Only :mod:`~app.serve.runner` and :mod:`~app.serve.schema` import ``cog``; the rest work
without it.
"""
