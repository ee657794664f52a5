"""Deployment: a trained student as ONNX or TorchScript, verified against PyTorch
(:mod:`.export`)."""
