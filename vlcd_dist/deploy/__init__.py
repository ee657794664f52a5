"""Deployment: a trained student as ONNX or TorchScript, verified against PyTorch
(:mod:`.export`); every evaluated model as a self-contained analyser folder, with ONNX fp32 and
int8 models, the tower in timm's format, the eval's probes and a model card (:mod:`.package`,
``vlcd package``; its figures in :mod:`.record`); and predictions from such a folder for
photographs (:mod:`.predict`, ``vlcd predict``), which never imports torch: it runs with the
base install plus ``pip install 'vlcd-dist[infer]'``."""
