"""Training backends behind one interface (``base.Backend``): torch (HF models) and megatron-core."""
