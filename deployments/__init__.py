"""Service classes a workflow names by short name (`deployment: noop`). Any importable
`module:Class` works as well; these are the ones hpcray ships. Strings, so that importing the
registry never imports a heavy (or GPU-only) backend."""

REGISTRY: dict[str, str] = {
    "noop": "hpcray.deployments.noop:Noop",
    "transformers_llm": "hpcray.deployments.transformers_llm:TransformersLLM",
    "embedding": "hpcray.deployments.embedding:Embedding",
    "vllm_llm": "hpcray.deployments.vllm_llm:VllmLLM",
}
