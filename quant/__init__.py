"""Artifact tooling around train_gpt.py: it holds no model code and imports train_gpt for everything.

python -m quant.verify ARTIFACT --code train_gpt.py [--log LOG]   size, decode, rebuild, re-score, compare
python -m quant.report ARTIFACT                                  bytes per tensor class and per codec
python -m quant.pack [train_gpt.py]                              self-extracting minified code
"""
