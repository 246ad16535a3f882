"""mvr past one machine, on Ray (the optional ``ray`` extra: ``bash scripts/install.sh ray``).

Owns the sharded layout (:mod:`mvr.cluster.sharding`: which shard an id belongs to, and the directory
of shards with its manifest) and bulk ingest on Ray Data (:mod:`mvr.cluster.ingest`). Each shard is an
ordinary mvr data directory: ``mvr serve --data-dir`` opens it as it is. The single-process server
(:mod:`mvr.server`) does not import this package.
"""
