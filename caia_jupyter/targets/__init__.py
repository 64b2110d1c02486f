"""Where a bundle runs, with NVIDIA FLARE: bundle -> job, and the simulator, POC and production targets."""
