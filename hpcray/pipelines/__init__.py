"""The paper's three pipelines, built on hpcray's services and stages."""
