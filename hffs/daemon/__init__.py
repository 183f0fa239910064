"""The hffs daemon: serves held content to peers, runs the DHT node, and answers
the local CLI on a loopback-only control API."""
