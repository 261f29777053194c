"""gloom: the Python client for gloomd."""
