"""The embedded toy models: pretraining of the toy CLIP, toy VLSM and toy diffusion generator, and their acceptance reports."""
