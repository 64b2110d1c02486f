"""NVIDIA FLARE: bundle -> job, the site guard, the server components, and run targets."""
