"""Evaluation: metrics computed from decoded videos (no access to model internals).

  table1    the paper's Table 1 metrics of one video, and their aggregate
  cuts      the weight-free shot-cut detector and transition control
  flow      pyramidal Lucas-Kanade optical flow in JAX, VBench's dynamic degree
  features  CLIP / DINOv2 / aesthetic-head feature extractors (JAX ports)
  report    the Table 1 Markdown table and the per-shot plot
  pixel     pixel-space metrics and test-set helpers of `shotstream-eval --testset`
  shapes    exact metrics for Shapes-world stories

Definitions: docs/evaluation.md.
"""
