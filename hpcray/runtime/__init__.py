"""What a process of the run needs from the machine it is on: the allocation's network, a
job-private port block, a short temp dir, GPU visibility, the Ray token, placement bundles,
and the process marker that scopes teardown to this job. Below services, stages and the
in-allocation orchestration, which all use it; it imports none of them."""
