"""clead serving: the predictor both engines run, TorchServe handler and model archiving, Triton
server and HTTP client.

Never imports ``training``: it runs self-contained exported artifacts."""
