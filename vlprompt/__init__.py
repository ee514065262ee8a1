"""vlprompt: a benchmark and plugin system for vision-language prompt learning."""

__version__ = "0.1.0"
