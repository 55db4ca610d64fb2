"""hermes-flare.yaml: the models, loading with positions, and what is generated from them.

Owns reading and validating the file (every error with FILE:LINE:COL and the
dotted field), the JSON Schema and docs/config.md, redaction of its secrets,
and rendering wrangler.toml. Must not start processes or reach the network.
"""
