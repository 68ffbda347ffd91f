"""Gradio widget for the metric's Hugging Face Space (evaluate's standard template)."""

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("metrics/egt")
launch_gradio_widget(module)
