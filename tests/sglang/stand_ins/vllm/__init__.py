"""Not vLLM. SGLang's rotary embedding imports ``vllm._custom_ops`` when it
builds a Llama-family model on a platform it does not recognise (a CPU
without SGLang's CPU engine), and uses it only in the forward pass. These
tests only load weights, so the import is all that has to succeed; calling
the operator fails loudly (see ``_custom_ops``)."""
