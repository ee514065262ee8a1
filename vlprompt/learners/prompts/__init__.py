"""Shared prompt machinery of the learners: prompt layers, vision-language prompts, conditioning, low-rank updates and test-time adaptation."""
