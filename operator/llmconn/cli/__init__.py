"""The command-line front ends: `llmconn` (run, validate) and the kubectl plugin."""
