"""Base vs fine-tuned features per layer: SAE transfer, decoder matching, crosscoders,
task-specific latents and feature cards (issue 6)."""
