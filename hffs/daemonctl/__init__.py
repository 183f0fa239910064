"""The CLI side of the daemon: its control-API client, and starting and stopping it."""
