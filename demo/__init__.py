"""clead demo: a Gradio attack lab comparing the baseline and the hardened model."""
