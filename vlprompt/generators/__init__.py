"""Image-variation generators for diffusion-augmented test-time views (DiffTPT), as ``vlprompt.generators`` plugins."""
