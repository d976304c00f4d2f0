"""Running verifiers safely: timeouts, separate processes, and the sandbox for generated code."""
