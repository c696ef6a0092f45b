"""nemo_ext: the AceReason-Nemotron 1.1 recipe (SFT + GRPO for math and code reasoning) as a library."""

__version__ = "0.1.0"
