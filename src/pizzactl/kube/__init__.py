"""Cluster and container plumbing that deploy and remote training share, and that imports neither.

`k8s` (client, server-side apply, rollouts), `k8s_files` (tar over exec into a pod), `diagnosis`
(why pods do not run), `capacity` (will the pods fit the nodes), `kind` (clusters, image loading),
`docker_daemon` (which daemon, which platform), `images` (the content-tagged images), `shipped`
(the k8s/ and docker/ folders and the names they fix) and `training` (what remote training leaves
behind: its record, its Job's progress, the label-based cleanup `teardown` runs). The
`kubernetes` and `docker` packages are imported only inside the functions that call them.
"""
