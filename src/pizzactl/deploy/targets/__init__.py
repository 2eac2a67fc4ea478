"""Where a deployment runs: one module per target, each with deploy / status / teardown / rollback.

local    the model server and gateway as background processes (no containers)
docker   the rendered pods as containers on a private network (a rehearsal of the cluster)
kind     a kind cluster pizzactl creates or reuses, images loaded with `kind load`
cluster  any existing cluster (--context), images pushed to --registry
"""
