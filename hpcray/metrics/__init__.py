"""Views of what a run did: the live status view, the timeline report."""
