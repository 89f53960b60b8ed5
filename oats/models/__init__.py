"""Where models come from and how their linears are found: the zoo and the adapters."""
