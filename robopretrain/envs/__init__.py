"""Targets: adapters that make a gymnasium env look like ours (dict observation, sparse success reward,
termination on success); ``metaworld`` is the Meta-World (v3) family."""
