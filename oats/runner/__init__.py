"""Running compressions: one request type, one execute, background jobs, sweeps."""
