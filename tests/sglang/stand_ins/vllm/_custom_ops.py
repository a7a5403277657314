"""See ``__init__``: the import SGLang's rotary embedding needs, nothing more."""


def rotary_embedding(*args, **kwargs):
    raise NotImplementedError("vllm._custom_ops.rotary_embedding is not available: the SGLang tests "
                              "only load weights, they never run a forward pass")
