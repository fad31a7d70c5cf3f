"""Text generation: a pure continuous-batching scheduler (``scheduler``), sampling
(``sampling``), a decoder folder loader (``folder``) and the decode engine that runs a
transformers causal language model one step at a time over many sequences (``engine``)."""
