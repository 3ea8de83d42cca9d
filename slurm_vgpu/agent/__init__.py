"""The node agent: keeps the placement's picture of this node true (inventory, liveness, failed GPUs)
and enforces what MPS alone does not (memory caps per job, the SLO guard), with metrics."""
