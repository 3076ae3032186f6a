"""Evaluation machinery: metrics, GFLOPs accounting, multi-view testing.

Submodules are imported on use (`from videoats.engine.flops import sample_gflops`), so importing this
package stays cheap and does not pull in fvcore or the data stack.
"""
