"""The network and what describes it: build, save, load, and the model card.

The VGG19 backbone with the thesis's head as one flat Keras model, its
preprocessing, the backbone weights (ImageNet, a local file, or random for
tests), device and precision choices, the calibration map of its output, the
model card (a typed, frozen record of how the model was trained) and the one
loader that scan and evaluate use.
"""
