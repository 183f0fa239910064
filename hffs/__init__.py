"""hffs: Hugging Face models from LAN peers first, the mirror and huggingface.co last."""

import os

# huggingface_hub's telemetry includes a lookup on huggingface.co (with a 3 s timeout)
# the first time it builds request headers: a stall on every command where the hub is
# blocked, which is where hffs is used. Set before huggingface_hub reads its constants.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
