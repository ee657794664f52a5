"""Deployment: a trained student as ONNX or TorchScript, verified against PyTorch
(:mod:`.export`), and predictions from a packaged model's ONNX file for photographs
(:mod:`.predict`, ``vlcd predict``), which never imports torch: it runs with the base install
plus ``pip install 'vlcd-dist[infer]'``."""
