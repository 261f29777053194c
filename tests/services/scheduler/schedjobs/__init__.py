"""Job functions named by "module:function" in the scheduler tests' TOML files."""
