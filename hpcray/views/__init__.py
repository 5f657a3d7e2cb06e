"""What a person sees of a run: the live status view over the API, and `hpcray report`'s
timeline and utilisation from the run directory."""
