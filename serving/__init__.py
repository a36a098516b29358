"""clead serving: TorchServe handler, model archiving, Triton server and HTTP client.

Never imports ``training``: it runs self-contained exported artifacts."""
