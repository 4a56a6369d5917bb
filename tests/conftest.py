"""Test set-up: 8 simulated CPU devices, so data parallelism is exercised on any machine."""
import os

# Must be set before JAX initialises its backend.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
