"""Evaluation: metrics (MPJPE, PA-MPJPE, PVE, LSP segmentation), LSP rendering, and the suite (`evaluate`).

Submodules are imported on use so that `import compress.eval` stays cheap:
`compress.eval.metrics`, `compress.eval.render`, `compress.eval.protocols.evaluate`.
"""
