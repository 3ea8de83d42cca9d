"""Inference traffic across replicas on slices of different GPUs (HPE's SMIF): each replica's
share of the requests follows its service rate, so that every replica's service rate over its
arrival rate is the same."""
