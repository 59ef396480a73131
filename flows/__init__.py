"""Prefect flows, shipped in the wheel as `atlas.flows` (deployments name
`atlas.flows.build:deployed_build`)."""
