"""The generator: tiny-sd (or a real Stable Diffusion checkpoint), per-client LoRA, synthetic shards."""
