"""Step 3 of the flow, audit: run the selected attacks and detectors on a loaded target and its data.

``runner`` (scan: checks, audit, verdict, run folder), ``scoring`` (one attack on one image set),
``calibration`` (base-calibrated scores of a fine-tune), ``runs`` (the run folder and its shards),
``engine`` / ``work`` / ``ray_engine`` / ``engines`` (where per-image work runs), ``ensemble``,
``epsilon``, ``dataset_inference`` and ``query`` (a data owner's question).
Imports: api, model, data, stats, io (layer contract in pyproject.toml); never mitigation or cli.
"""
