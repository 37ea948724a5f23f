"""``assistant-axis serve``: an OpenAI-compatible chat server with per-request capping and live axis telemetry.

Why a package of its own: serving is an application on top of the method (layer 4, beside ``cli``),
made of small parts that are tested through a real HTTP client:

* :mod:`.setup` - what is served: model, axis, target layer, capping experiments, the calibrated
  range and the drift threshold of ``capping: "auto"`` (from ``--run`` or explicit files);
* :mod:`.protocol` - the OpenAI chat request as this server reads it, its errors (OpenAI shape)
  and its replies;
* :mod:`.engine` - one engine loop thread that owns vLLM (continuous batching: every request joins
  the running batch at the next step) or, without vLLM, HF transformers one request at a time;
* :mod:`.metrics` - Prometheus counters and histograms;
* :mod:`.app` - the HTTP server (standard library, one thread per connection) and the chat page
  in ``static/index.html``.
"""
